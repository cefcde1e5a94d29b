//! Shared service state: configuration, the matching engine (attached once the store is
//! loaded), calibration tables, API keys, the audit log, metrics and the load-shedding semaphore.

use crate::audit::AuditLog;
use crate::config::{Config, ModalityKind, Role};
use crate::decode_budget::DecodeBudget;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use biomatch_core::{CalibrationTable, Modality, ModelId};
pub use biomatch_engine::mcc_model;
use biomatch_engine::{Engine, EngineModel, ModelKind};
use biomatch_gallery::{Gallery, ModelSpec};
use biomatch_models::finger::FingerExtractor;
use biomatch_models::Extractor;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// A model the service accepts, with its calibration.
#[derive(Clone, Debug)]
pub struct ServiceModel {
    pub id: ModelId,
    pub dim: usize,
    pub kind: ModalityKind,
    pub calibration: CalibrationTable,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub roles: Vec<Role>,
}

/// Responses of recent enrollments by Idempotency-Key, so a retried request gets the original
/// answer. Bounded; after a restart the content check in the enroll handler takes over.
#[derive(Debug, Default)]
pub struct IdempotencyCache {
    map: HashMap<String, ([u8; 32], crate::api::SubjectOut)>,
    order: VecDeque<String>,
}

impl IdempotencyCache {
    const CAPACITY: usize = 100_000;

    pub fn get(&self, key: &str) -> Option<&([u8; 32], crate::api::SubjectOut)> {
        self.map.get(key)
    }

    pub fn put(&mut self, key: String, fingerprint: [u8; 32], out: crate::api::SubjectOut) {
        if self.map.insert(key.clone(), (fingerprint, out)).is_none() {
            self.order.push_back(key);
            while self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    engine: OnceLock<Arc<Engine>>,
    /// This node's membership of a cluster (`[cluster] enabled`): then the subject endpoints
    /// go through it, and there is no local engine.
    cluster: OnceLock<Arc<biomatch_cluster::Node>>,
    pub models: Vec<ServiceModel>,
    /// SHA-256 (hex) of the key → who it is. Empty: authentication is off (loopback only).
    keys: HashMap<String, KeyInfo>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
    pub limiter: Arc<Semaphore>,
    /// Per-key token buckets (`limits.per_key_rps`): key id -> (tokens, last refill).
    pub key_rates: Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    /// Memory image decodes in flight may hold together (`limits.decode_memory_mb`).
    pub decode_budget: Arc<DecodeBudget>,
    pub idempotency: Mutex<IdempotencyCache>,
    /// The face extractor, when images are accepted.
    pub face: Option<Arc<dyn Extractor>>,
    /// Minutiae fingerprints: calibration (their search is part of the engine), extractor.
    pub finger_calibration: Option<CalibrationTable>,
    pub finger_extractor: Option<Arc<FingerExtractor>>,
    /// Index build jobs (`POST /v1/admin/index/build`).
    pub builds: crate::admin::BuildJobs,
    /// Backlog deduplication jobs (`POST /v1/admin/dedup`).
    pub dedup: crate::backlog::DedupJobs,
    /// The recall samples of the serving index generations (`crate::recall_monitor`).
    pub recall_monitor: crate::recall_monitor::RecallMonitor,
    /// The asynchronous job queue (`crate::jobs`), started once the gallery is attached.
    pub jobs: crate::jobs::Jobs,
}

/// The MCC calibration table built into the binary (synthetic prints, see the file's basis).
pub const MCC_CALIBRATION: &str = include_str!("../calibration/mcc@1.json");
/// The SFace table built into the binary (`biomatch calibrate-face`, 1751 real impostor pairs,
/// see its basis).
pub const SFACE_CALIBRATION: &str = include_str!("../calibration/sface@2021dec.json");
/// dlib's ResNet descriptor's table built into the binary (`biomatch calibrate-face --model
/// dlib-resnet@v1`, 1751 real impostor pairs, see its basis).
pub const DLIB_CALIBRATION: &str = include_str!("../calibration/dlib-resnet@v1.json");
/// The synthetic face model's table built into the binary (`biomatch calibrate-synthetic`).
pub const SYNTHETIC_CALIBRATION: &str = include_str!("../calibration/synthetic-face@1.json");

/// A calibration table compiled into the binary: the default of a shipped model, overridden by
/// a file in the data directory when one is there (`matcher/calibration/README.md`).
#[derive(Clone, Copy, Debug)]
pub struct BuiltinCalibration {
    /// `name@version`.
    pub model: &'static str,
    /// The template dimension the table was built for (`None`: not a vector model). Scores of
    /// another dimension are distributed differently, so the table does not apply to them.
    pub dim: Option<usize>,
    pub json: &'static str,
}

/// Every built-in table.
pub const BUILTIN_CALIBRATIONS: [BuiltinCalibration; 4] = [
    BuiltinCalibration { model: "mcc@1", dim: None, json: MCC_CALIBRATION },
    BuiltinCalibration { model: "sface@2021dec", dim: Some(128), json: SFACE_CALIBRATION },
    BuiltinCalibration { model: "dlib-resnet@v1", dim: Some(128), json: DLIB_CALIBRATION },
    BuiltinCalibration { model: "synthetic-face@1", dim: Some(128), json: SYNTHETIC_CALIBRATION },
];

/// The built-in table of `model` for templates of `dim` values (`None` for minutiae), if any.
pub fn builtin_calibration(model: &ModelId, dim: Option<usize>) -> Option<&'static str> {
    let name = model.to_string();
    BUILTIN_CALIBRATIONS.iter().find(|b| b.model == name && b.dim == dim).map(|b| b.json)
}

/// Where a model's calibration table came from (logged at start-up).
#[derive(Clone, Debug, PartialEq)]
pub enum CalibrationSource {
    /// Compiled into the binary.
    BuiltIn,
    /// A file (an override of the built-in table, or the only table of a model without one).
    File(PathBuf),
}

impl std::fmt::Display for CalibrationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibrationSource::BuiltIn => f.write_str("built-in"),
            CalibrationSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Parse and check a calibration table of `model` (`what` names it in the errors).
fn parse_calibration(
    bytes: &[u8],
    model: &ModelId,
    what: &str,
) -> Result<CalibrationTable, String> {
    // Deserialisation validates the table; `validate` again in case that ever changes.
    let t: CalibrationTable =
        serde_json::from_slice(bytes).map_err(|e| format!("{what} is invalid: {e}"))?;
    t.validate().map_err(|e| format!("{what} is invalid: {e}"))?;
    if t.model != *model {
        return Err(format!("{what} is for {}, not {model}", t.model));
    }
    Ok(t)
}

/// How to make the calibration table of `model` (for start-up errors).
fn calibration_hint(model: &ModelId, dim: Option<usize>, data: &Path) -> String {
    match (model.to_string().as_str(), dim) {
        ("synthetic-face@1", Some(d)) => {
            let dim = if d == 128 { String::new() } else { format!(" --dim {d}") };
            format!("create it with `biomatch calibrate-synthetic --data {}{dim}`", data.display())
        }
        (m @ ("sface@2021dec" | "dlib-resnet@v1"), _) => {
            format!(
                "create it with `biomatch calibrate-face --model {m} --data {}`",
                data.display()
            )
        }
        _ => "write the model's calibration table there (JSON, built from its impostor scores; \
              see core::calibration)"
            .into(),
    }
}

/// Load the calibration table of `model`: the file at `path` when there is one (it overrides
/// the built-in table), else the built-in table. `required`: the file was named explicitly and
/// must exist. A file that is present but unreadable, not a valid table or for another model is
/// an error naming it; so is a model with neither a file nor a built-in table.
pub fn load_calibration(
    model: &ModelId,
    dim: Option<usize>,
    path: &Path,
    required: bool,
    data: &Path,
) -> Result<(CalibrationTable, CalibrationSource), String> {
    let builtin = builtin_calibration(model, dim);
    match std::fs::read(path) {
        Ok(bytes) => {
            let what = format!("calibration table {}", path.display());
            let t = parse_calibration(&bytes, model, &what).map_err(|e| {
                let fix = if builtin.is_some() {
                    format!("remove it to use the built-in table of {model}, or replace it")
                } else {
                    calibration_hint(model, dim, data)
                };
                format!("{e}; {fix}")
            })?;
            Ok((t, CalibrationSource::File(path.to_owned())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => match builtin {
            Some(json) => {
                let t = parse_calibration(json.as_bytes(), model, "built-in calibration table")?;
                Ok((t, CalibrationSource::BuiltIn))
            }
            None => {
                let dims = dim.map(|d| format!(" for {d}-value templates")).unwrap_or_default();
                Err(format!(
                    "no calibration table for {model}: no file at {} and no built-in table{dims}; \
                     {}",
                    path.display(),
                    calibration_hint(model, dim, data)
                ))
            }
        },
        Err(e) => {
            Err(format!("calibration table {} (for {model}) cannot be read: {e}", path.display()))
        }
    }
}

/// Parse and check an MCC calibration table.
pub fn mcc_calibration(bytes: &[u8]) -> Result<CalibrationTable, String> {
    parse_calibration(bytes, &mcc_model(), "MCC calibration table")
}

/// The configured vector models with their calibration tables: the file in the data
/// directory when there is one, else the table built into the binary.
pub fn load_models(config: &Config) -> Result<Vec<ServiceModel>, String> {
    let mut models = Vec::new();
    for m in &config.models {
        let id = ModelId::parse(&m.id).map_err(|e| e.to_string())?;
        let path = config.calibration_path(m);
        let (calibration, source) = load_calibration(&id, Some(m.dim), &path, false, &config.data)?;
        log_calibration(&id, &calibration, &source);
        models.push(ServiceModel { id, dim: m.dim, kind: m.modality, calibration });
    }
    Ok(models)
}

/// The MCC calibration table when fingerprints are on (`None` when they are off).
pub fn load_finger_calibration(config: &Config) -> Result<Option<CalibrationTable>, String> {
    let fp = &config.fingerprints;
    if !fp.enabled {
        return Ok(None);
    }
    let mcc = mcc_model();
    // A configured path must exist; by default `<data>/calibration/mcc@1.json` overrides
    // the built-in table when it is there, like the vector models' tables.
    let (path, required) = match &fp.calibration {
        Some(p) if p.is_absolute() => (p.clone(), true),
        Some(p) => (config.data.join(p), true),
        None => (config.data.join("calibration").join(format!("{mcc}.json")), false),
    };
    let (table, source) = load_calibration(&mcc, None, &path, required, &config.data)?;
    log_calibration(&mcc, &table, &source);
    Ok(Some(table))
}

/// The store specs of `models`; with fingerprints on, the fingers' pre-selection codes too.
pub fn model_specs_of(models: &[ServiceModel], fingerprints: bool) -> Vec<ModelSpec> {
    let mut specs: Vec<ModelSpec> =
        models.iter().map(|m| ModelSpec { model: m.id.clone(), dim: m.dim }).collect();
    if fingerprints {
        specs.push(biomatch_gallery::finger_code_spec());
    }
    specs
}

/// The engine's view of `models`.
pub fn engine_models_of(models: &[ServiceModel]) -> Vec<EngineModel> {
    models
        .iter()
        .map(|m| EngineModel {
            id: m.id.clone(),
            dim: m.dim,
            kind: match m.kind {
                ModalityKind::Face => ModelKind::Face,
                ModalityKind::Finger => ModelKind::Finger,
            },
            calibration: m.calibration.clone(),
        })
        .collect()
}

impl AppState {
    /// Build the state from a validated configuration; loads every calibration table: the file
    /// in the data directory when there is one, else the table built into the binary. A bad
    /// file, or a model with neither, stops the start-up with a message naming the file and
    /// saying how to make one.
    pub fn new(config: Config, audit: Arc<AuditLog>) -> Result<AppState, String> {
        let models = load_models(&config)?;
        let finger_calibration = load_finger_calibration(&config)?;
        let fp = config.fingerprints.clone();
        let mut state = Self::with_models(config, audit, models);
        if let Some(table) = finger_calibration {
            let limits = biomatch_models::finger::FingerLimits {
                image: fp.image_limits(),
                min_minutiae: fp.min_minutiae,
                ..Default::default()
            };
            state.finger_calibration = Some(table);
            state.finger_extractor = Some(Arc::new(FingerExtractor::new(limits)));
        }
        Ok(state)
    }

    /// Take one request from `key_id`'s token bucket (`limits.per_key_rps`); `Err(seconds)`
    /// to wait when it is empty.
    pub fn take_rate(&self, key_id: &str) -> Result<(), u64> {
        let Some(rps) = self.config.limits.per_key_rps else { return Ok(()) };
        let burst = self.config.limits.per_key_burst.unwrap_or(rps).max(1.0);
        let now = std::time::Instant::now();
        let mut rates = self.key_rates.lock();
        if !rates.contains_key(key_id) {
            rates.insert(key_id.to_owned(), (burst, now));
        }
        let (tokens, last) = rates.get_mut(key_id).expect("inserted above");
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rps).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rps).ceil().max(1.0) as u64)
        }
    }

    /// Build the state from models whose calibration is already in memory (tests, tools).
    pub fn with_models(
        config: Config,
        audit: Arc<AuditLog>,
        models: Vec<ServiceModel>,
    ) -> AppState {
        let keys = config
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.sha256.to_ascii_lowercase(),
                    KeyInfo { id: k.id.clone(), roles: k.roles.clone() },
                )
            })
            .collect();
        AppState {
            limiter: Arc::new(Semaphore::new(config.limits.max_concurrent)),
            key_rates: Mutex::default(),
            decode_budget: DecodeBudget::new(config.decode_budget_bytes()),
            config,
            engine: OnceLock::new(),
            cluster: OnceLock::new(),
            models,
            keys,
            audit,
            metrics: Metrics::new(),
            idempotency: Mutex::new(IdempotencyCache::default()),
            builds: Default::default(),
            dedup: Default::default(),
            recall_monitor: Default::default(),
            jobs: Default::default(),
            face: None,
            finger_calibration: None,
            finger_extractor: None,
        }
    }

    /// Accept minutiae fingerprints, scored with `calibration`, images through `extractor`.
    pub fn with_fingerprints(
        mut self,
        calibration: CalibrationTable,
        extractor: Option<Arc<FingerExtractor>>,
    ) -> Self {
        self.finger_calibration = Some(calibration);
        self.finger_extractor = extractor;
        self
    }

    /// Accept face images through `extractor`.
    pub fn with_face(mut self, extractor: Arc<dyn Extractor>) -> Self {
        self.face = Some(extractor);
        self
    }

    /// The store specs for the configured models.
    /// With fingerprints on, the column of the fingers' pre-selection codes too.
    pub fn model_specs(&self) -> Vec<ModelSpec> {
        model_specs_of(&self.models, self.config.fingerprints.enabled)
    }

    /// The engine's view of the configured models.
    pub fn engine_models(&self) -> Vec<EngineModel> {
        engine_models_of(&self.models)
    }

    /// Attach the loaded engine: the service becomes ready.
    pub fn attach(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or `not_ready` while the store is loading; on a cluster node (which has
    /// no one engine) `not_supported`.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        if self.config.cluster.enabled {
            return Err(ApiError::new(
                ErrorCode::NotSupported,
                "not available on a cluster node yet (its replicas' stores are per shard): \
                 enroll, verify, identify, subject reads and deletes are; see docs/cluster.md",
            ));
        }
        self.engine.get().ok_or_else(ApiError::not_ready)
    }

    /// Attach this node's cluster membership: the service becomes ready once it is.
    pub fn attach_cluster(&self, node: Arc<biomatch_cluster::Node>) {
        let _ = self.cluster.set(node);
    }

    /// The cluster node, when this service is one (`None` on a single-node service);
    /// `not_ready` while it is joining.
    pub fn cluster(&self) -> Option<Result<&Arc<biomatch_cluster::Node>, ApiError>> {
        self.config.cluster.enabled.then(|| self.cluster.get().ok_or_else(ApiError::not_ready))
    }

    pub fn gallery(&self) -> Result<&Arc<Gallery>, ApiError> {
        self.engine().map(|e| e.gallery())
    }

    pub fn is_ready(&self) -> bool {
        match self.cluster.get() {
            Some(n) => n.is_ready(),
            None => self.engine.get().is_some(),
        }
    }

    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn key(&self, sha256_hex: &str) -> Option<&KeyInfo> {
        self.keys.get(sha256_hex)
    }

    /// The configured models for a modality.
    pub fn models_for(&self, modality: Modality) -> impl Iterator<Item = &ServiceModel> {
        let kind = match modality {
            Modality::Face => ModalityKind::Face,
            Modality::Finger(_) => ModalityKind::Finger,
        };
        self.models.iter().filter(move |m| m.kind == kind)
    }

    /// The extractor for images of a modality.
    pub fn extractor_for(&self, modality: Modality) -> Option<&Arc<dyn Extractor>> {
        match modality {
            Modality::Face => self.face.as_ref(),
            Modality::Finger(_) => None,
        }
    }

    pub fn model(&self, id: &ModelId) -> Option<&ServiceModel> {
        self.models.iter().find(|m| &m.id == id)
    }
}

fn log_calibration(model: &ModelId, table: &CalibrationTable, source: &CalibrationSource) {
    tracing::info!(
        model = %model,
        source = %source,
        impostors = table.impostor_count,
        "calibration table"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ModelId {
        ModelId::parse(s).unwrap()
    }

    #[test]
    fn builtin_tables_parse_validate_and_name_their_model() {
        for b in BUILTIN_CALIBRATIONS {
            let model = id(b.model);
            let t = parse_calibration(b.json.as_bytes(), &model, b.model).unwrap();
            assert_eq!(t.model, model);
            // The face tables rest on 1751 real impostor pairs, the others on >= 10^5 drawn ones.
            assert!(t.impostor_count >= 1_000, "{}: {}", b.model, t.impostor_count);
            assert_eq!(builtin_calibration(&model, b.dim), Some(b.json));
        }
        // A synthetic model of another dimension has no built-in table.
        assert_eq!(builtin_calibration(&id("synthetic-face@1"), Some(64)), None);
        assert_eq!(builtin_calibration(&id("other@1"), Some(128)), None);
    }

    #[test]
    fn a_file_overrides_the_builtin_table_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let m = id("synthetic-face@1");
        let path = data.join("synthetic-face@1.json");

        let (t, source) = load_calibration(&m, Some(128), &path, false, data).unwrap();
        assert_eq!(source, CalibrationSource::BuiltIn);
        assert_eq!(t, serde_json::from_str(SYNTHETIC_CALIBRATION).unwrap());

        // A valid file wins over the built-in table.
        let mut other: CalibrationTable = serde_json::from_str(SYNTHETIC_CALIBRATION).unwrap();
        other.impostor_count = 12_345;
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        let (t, source) = load_calibration(&m, Some(128), &path, false, data).unwrap();
        assert_eq!(source, CalibrationSource::File(path.clone()));
        assert_eq!(t.impostor_count, 12_345);

        // Present but bad: not JSON, not a valid table, another model's, not a file.
        let mut invalid = other.clone();
        invalid.points.reverse();
        for (bytes, why) in [
            (b"not json".to_vec(), "invalid"),
            (serde_json::to_vec(&invalid).unwrap(), "invalid"),
            (MCC_CALIBRATION.as_bytes().to_vec(), "is for mcc@1"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = load_calibration(&m, Some(128), &path, false, data).unwrap_err();
            assert!(e.contains(&path.display().to_string()) && e.contains(why), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = load_calibration(&m, Some(128), &path, false, data).unwrap_err();
        assert!(e.contains(&path.display().to_string()) && e.contains("cannot be read"), "{e}");

        // Neither a file nor a built-in table: the file and the command to make it.
        let missing = data.join("missing.json");
        let e = load_calibration(&m, Some(64), &missing, false, data).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("biomatch calibrate-synthetic") && e.contains("--dim 64"), "{e}");
        let e = load_calibration(&id("other@1"), Some(128), &missing, false, data).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        // A file named explicitly must exist, built-in table or not.
        let e = load_calibration(&mcc_model(), None, &missing, true, data).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let (_, source) = load_calibration(&mcc_model(), None, &missing, false, data).unwrap();
        assert_eq!(source, CalibrationSource::BuiltIn);
    }
}
