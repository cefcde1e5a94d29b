//! Shared service state: configuration, the matching engine (attached once the store is
//! loaded), calibration tables, API keys, the audit log, metrics and the load-shedding semaphore.

use crate::audit::AuditLog;
use crate::config::{Config, ModalityKind, Role};
use crate::error::ApiError;
use crate::metrics::Metrics;
use biomatch_core::{CalibrationTable, Modality, ModelId};
pub use biomatch_engine::mcc_model;
use biomatch_engine::{Engine, EngineModel, ModelKind};
use biomatch_gallery::{Gallery, ModelSpec};
use biomatch_models::finger::FingerExtractor;
use biomatch_models::Extractor;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// A model the service accepts, with its calibration.
#[derive(Debug)]
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
    pub models: Vec<ServiceModel>,
    /// SHA-256 (hex) of the key → who it is. Empty: authentication is off (loopback only).
    keys: HashMap<String, KeyInfo>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
    pub limiter: Arc<Semaphore>,
    pub idempotency: Mutex<IdempotencyCache>,
    /// The face extractor, when images are accepted.
    pub face: Option<Arc<dyn Extractor>>,
    /// Minutiae fingerprints: calibration (their search is part of the engine), extractor.
    pub finger_calibration: Option<CalibrationTable>,
    pub finger_extractor: Option<Arc<FingerExtractor>>,
}

/// The MCC calibration table built into the binary (synthetic prints, see the file's basis).
pub const MCC_CALIBRATION: &str = include_str!("../calibration/mcc@1.json");

/// Parse and check an MCC calibration table.
pub fn mcc_calibration(bytes: &[u8]) -> Result<CalibrationTable, String> {
    let t: CalibrationTable =
        serde_json::from_slice(bytes).map_err(|e| format!("MCC calibration table: {e}"))?;
    t.validate().map_err(|e| format!("MCC calibration table: {e}"))?;
    if t.model != mcc_model() {
        return Err(format!("MCC calibration table is for {}, not {}", t.model, mcc_model()));
    }
    Ok(t)
}

impl AppState {
    /// Build the state from a validated configuration; loads every calibration table (a missing
    /// or invalid table stops the start-up with a message saying how to make one).
    pub fn new(config: Config, audit: Arc<AuditLog>) -> Result<AppState, String> {
        let mut models = Vec::new();
        for m in &config.models {
            let id = ModelId::parse(&m.id).map_err(|e| e.to_string())?;
            let path = config.calibration_path(m);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "calibration table for {} at {} cannot be read ({e}); for synthetic models \
                     create it with `biomatch calibrate-synthetic --data {}`",
                    m.id,
                    path.display(),
                    config.data.display()
                )
            })?;
            let calibration: CalibrationTable = serde_json::from_slice(&bytes)
                .map_err(|e| format!("calibration table {} is invalid: {e}", path.display()))?;
            if calibration.model != id {
                return Err(format!(
                    "calibration table {} is for {}, not {}",
                    path.display(),
                    calibration.model,
                    id
                ));
            }
            models.push(ServiceModel { id, dim: m.dim, kind: m.modality, calibration });
        }
        let fp = config.fingerprints.clone();
        let mut state = Self::with_models(config, audit, models);
        if fp.enabled {
            let table = match &fp.calibration {
                None => mcc_calibration(MCC_CALIBRATION.as_bytes())?,
                Some(p) => {
                    let p = if p.is_absolute() { p.clone() } else { state.config.data.join(p) };
                    let bytes = std::fs::read(&p)
                        .map_err(|e| format!("MCC calibration table {}: {e}", p.display()))?;
                    mcc_calibration(&bytes)?
                }
            };
            let limits = biomatch_models::finger::FingerLimits {
                image: biomatch_models::imageio::ImageLimits {
                    max_bytes: fp.max_image_bytes,
                    max_side: fp.max_image_side,
                },
                min_minutiae: fp.min_minutiae,
                ..Default::default()
            };
            state.finger_calibration = Some(table);
            state.finger_extractor = Some(Arc::new(FingerExtractor::new(limits)));
        }
        Ok(state)
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
            config,
            engine: OnceLock::new(),
            models,
            keys,
            audit,
            metrics: Metrics::new(),
            idempotency: Mutex::new(IdempotencyCache::default()),
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
    pub fn model_specs(&self) -> Vec<ModelSpec> {
        self.models.iter().map(|m| ModelSpec { model: m.id.clone(), dim: m.dim }).collect()
    }

    /// The engine's view of the configured models.
    pub fn engine_models(&self) -> Vec<EngineModel> {
        self.models
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

    /// Attach the loaded engine: the service becomes ready.
    pub fn attach(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or `not_ready` while the store is loading.
    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or_else(ApiError::not_ready)
    }

    pub fn gallery(&self) -> Result<&Arc<Gallery>, ApiError> {
        self.engine().map(|e| e.gallery())
    }

    pub fn is_ready(&self) -> bool {
        self.engine.get().is_some()
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
