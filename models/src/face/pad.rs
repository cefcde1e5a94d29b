//! Presentation-attack detection (liveness): the hook for a model that tells a live face from a
//! photo, screen or mask held up to the camera.
//!
//! No face anti-spoofing model with a clearly permissive licence ships in a registry package
//! biomatch may use (what was checked is in `docs/face-models.md`), so none is built in: a
//! detector is attached with [`super::FaceExtractor::with_pad`], its score comes back in
//! [`crate::Quality::attack_score`], and the service refuses a 1:1 verification whose score
//! exceeds `extractors.face.pad_threshold` with 422 `presentation_attack`.

use super::detect::Face;
use crate::ExtractError;
use image::RgbImage;

/// A presentation-attack detector. Implementations are `Send + Sync`, CPU-bound, and called on
/// the blocking pool with the decoded image and the face the extractor chose.
pub trait PresentationAttackDetector: Send + Sync + std::fmt::Debug {
    /// What it is (logged at start-up).
    fn name(&self) -> &str;
    /// How likely the face is an attack, in [0, 1] (0: live).
    fn attack_score(&self, image: &RgbImage, face: &Face) -> Result<f32, ExtractError>;
}
