//! The face extractor: decode → YuNet detection → 5-point alignment → SFace embedding →
//! L2-normalised 128-d template tagged `sface@2021dec`.

pub mod align;
pub mod detect;

use crate::imageio::{decode_rgb, ImageLimits};
use crate::runtime::{RuntimeConfig, SessionPool};
use crate::{ExtractError, Extraction, Extractor, Quality};
use biomatch_core::{Modality, ModelId, Template};
use ort::value::TensorRef;
use rayon::prelude::*;

/// Output dimension of SFace.
pub const DIM: usize = 128;

/// What to do when an image holds several faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiFacePolicy {
    /// Use the largest face (a selfie with people behind).
    Largest,
    /// Refuse the image (a chip photo or enrollment capture must show one person).
    Reject,
}

#[derive(Clone, Debug)]
pub struct FaceConfig {
    pub runtime: RuntimeConfig,
    pub limits: ImageLimits,
    pub policy: MultiFacePolicy,
    /// Smallest accepted distance between the eyes, in original pixels.
    pub min_inter_eye_px: f32,
}

impl FaceConfig {
    pub fn new(runtime: RuntimeConfig) -> Self {
        Self {
            runtime,
            limits: ImageLimits::default(),
            policy: MultiFacePolicy::Largest,
            min_inter_eye_px: 20.0,
        }
    }
}

/// YuNet + SFace through pooled ONNX Runtime sessions.
#[derive(Debug)]
pub struct FaceExtractor {
    model: ModelId,
    config: FaceConfig,
    detector: SessionPool,
    embedder: SessionPool,
}

impl FaceExtractor {
    /// The model id of SFace templates.
    pub fn model_id() -> ModelId {
        ModelId::new("sface", "2021dec").expect("valid model id")
    }

    /// Load both models (`yunet.onnx`, `sface.onnx` in the models folder).
    pub fn new(config: FaceConfig) -> Result<Self, ExtractError> {
        let dir = &config.runtime.models_dir;
        let detector = SessionPool::new(&config.runtime, &dir.join("yunet.onnx"))?;
        let embedder = SessionPool::new(&config.runtime, &dir.join("sface.onnx"))?;
        Ok(Self { model: Self::model_id(), config, detector, embedder })
    }

    /// The raw (un-normalised) SFace output for an aligned crop (RGB NCHW 0–255).
    pub fn embed(&self, crop: &[f32]) -> Result<Vec<f32>, ExtractError> {
        self.embedder.with(|s| {
            let input = TensorRef::from_array_view(([1usize, 3, align::SIZE, align::SIZE], crop))?;
            let out = s.run(ort::inputs!["data" => input])?;
            let (_, v) = out["fc1"].try_extract_tensor::<f32>()?;
            if v.len() != DIM {
                return Err(ExtractError::Runtime(format!("embedder returned {} values", v.len())));
            }
            Ok(v.to_vec())
        })
    }

    /// Detection and face choice, exposed for the reference comparison and quality reports.
    pub fn detect(
        &self,
        image: &[u8],
    ) -> Result<(image::RgbImage, Vec<detect::Face>), ExtractError> {
        let img = decode_rgb(image, &self.config.limits)?;
        let faces = detect::detect(&self.detector, &img)?;
        Ok((img, faces))
    }
}

impl Extractor for FaceExtractor {
    fn model(&self) -> &ModelId {
        &self.model
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn extract(&self, image: &[u8], modality: Modality) -> Result<Extraction, ExtractError> {
        if modality != Modality::Face {
            return Err(ExtractError::Runtime(format!(
                "the face extractor cannot extract {modality}"
            )));
        }
        let (img, faces) = self.detect(image)?;
        let face = match (faces.len(), self.config.policy) {
            (0, _) => return Err(ExtractError::NoFace),
            (n, MultiFacePolicy::Reject) if n > 1 => return Err(ExtractError::SeveralFaces(n)),
            _ => faces.iter().max_by(|a, b| a.area().total_cmp(&b.area())).expect("non-empty"),
        };
        let inter_eye_px = face.inter_eye();
        if inter_eye_px < self.config.min_inter_eye_px {
            return Err(ExtractError::FaceTooSmall {
                inter_eye_px,
                min: self.config.min_inter_eye_px,
            });
        }
        let crop = align::align(&img, &face.landmarks);
        let raw = self.embed(&crop)?;
        let template = Template::new(self.model.clone(), DIM, raw)
            .map_err(|e| ExtractError::Runtime(format!("embedding: {e}")))?;
        Ok(Extraction {
            modality,
            template,
            quality: Quality {
                detector_score: face.score,
                inter_eye_px,
                sharpness: align::sharpness(&crop),
                faces: faces.len(),
                bbox: face.bbox,
            },
        })
    }

    /// Images are spread over the rayon pool; each borrows sessions from the pools.
    fn extract_batch(
        &self,
        images: &[&[u8]],
        modality: Modality,
    ) -> Vec<Result<Extraction, ExtractError>> {
        images.par_iter().map(|i| self.extract(i, modality)).collect()
    }
}
