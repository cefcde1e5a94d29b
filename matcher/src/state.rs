//! Shared service state: configuration, the gallery (attached once it is loaded), calibration
//! tables, API keys, the audit log, metrics and the load-shedding semaphore.

use crate::audit::AuditLog;
use crate::config::{Config, ModalityKind, Role};
use crate::error::ApiError;
use crate::metrics::Metrics;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{CalibrationTable, Modality, ModelId};
use biomatch_gallery::{FingerGallery, Gallery, ModelSpec};
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
    gallery: OnceLock<Arc<Gallery>>,
    pub models: Vec<ServiceModel>,
    /// SHA-256 (hex) of the key → who it is. Empty: authentication is off (loopback only).
    keys: HashMap<String, KeyInfo>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub limiter: Arc<Semaphore>,
    pub idempotency: Mutex<IdempotencyCache>,
    /// The face extractor, when images are accepted.
    pub face: Option<Arc<dyn Extractor>>,
    /// Minutiae fingerprints: search (attached with the gallery), calibration, extractor.
    fingers: OnceLock<Arc<FingerGallery>>,
    pub finger_calibration: Option<CalibrationTable>,
    pub finger_extractor: Option<Arc<FingerExtractor>>,
    /// Enrollments touch two stores (vectors, minutiae): one at a time, so the existence check
    /// and both writes are not interleaved with another enrollment of the same subject.
    pub enroll_lock: Mutex<()>,
}

/// The MCC calibration table built into the binary (synthetic prints, see the file's basis).
pub const MCC_CALIBRATION: &str = include_str!("../calibration/mcc@1.json");

/// The id minutiae fingers are scored under: mindtct minutiae (or a client's ISO/ANSI record)
/// compared by MCC.
pub fn mcc_model() -> ModelId {
    ModelId::new("mcc", "1").expect("valid model id")
}

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
    pub fn new(config: Config, audit: AuditLog) -> Result<AppState, String> {
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
    pub fn with_models(config: Config, audit: AuditLog, models: Vec<ServiceModel>) -> AppState {
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
            gallery: OnceLock::new(),
            models,
            keys,
            audit,
            metrics: Metrics::new(),
            idempotency: Mutex::new(IdempotencyCache::default()),
            face: None,
            fingers: OnceLock::new(),
            finger_calibration: None,
            finger_extractor: None,
            enroll_lock: Mutex::new(()),
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

    /// Attach the loaded finger search (before [`AppState::attach`], which makes the service ready).
    pub fn attach_fingers(&self, fingers: Arc<FingerGallery>) {
        let _ = self.fingers.set(fingers);
    }

    /// The finger search, if fingerprints are enabled and loaded.
    pub fn fingers(&self) -> Option<&Arc<FingerGallery>> {
        self.fingers.get()
    }

    /// The finger search, or why there is none.
    pub fn fingers_or_err(&self) -> Result<&Arc<FingerGallery>, ApiError> {
        self.gallery()?;
        self.fingers.get().ok_or_else(|| {
            ApiError::invalid(
                "fingerprints_unavailable",
                "this server does not accept minutiae fingerprints (fingerprints.enabled = false)",
            )
        })
    }

    /// Check a minutiae finger template against the service's rules.
    pub fn check_finger(&self, t: &FingerTemplate) -> Result<(), ApiError> {
        t.validate().map_err(|e| ApiError::invalid("invalid_template", e.to_string()))
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

    /// Attach the loaded gallery: the service becomes ready.
    pub fn attach(&self, gallery: Arc<Gallery>) {
        let _ = self.gallery.set(gallery);
    }

    pub fn gallery(&self) -> Result<&Arc<Gallery>, ApiError> {
        self.gallery.get().ok_or_else(ApiError::not_ready)
    }

    pub fn is_ready(&self) -> bool {
        self.gallery.get().is_some()
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

    /// The calibration table scores of `model` are read with (`mcc@1` for minutiae fingers).
    pub fn calibration(&self, model: &ModelId) -> Result<&CalibrationTable, ApiError> {
        if *model == mcc_model() {
            if let Some(t) = &self.finger_calibration {
                return Ok(t);
            }
        }
        self.model(model)
            .map(|m| &m.calibration)
            .ok_or_else(|| ApiError::internal("model without calibration"))
    }

    pub fn model(&self, id: &ModelId) -> Option<&ServiceModel> {
        self.models.iter().find(|m| &m.id == id)
    }
}
