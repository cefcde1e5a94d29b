//! The face extractor: decode → YuNet detection → 5-point alignment → embedding (SFace, or
//! dlib's ResNet descriptor) → L2-normalised 128-d template tagged with the model's id
//! (`sface@2021dec`, `dlib-resnet@v1`), plus the capture-quality measures ([`quality`]).

pub mod align;
pub mod detect;
pub mod eyes;
pub mod pad;
pub mod quality;

use crate::imageio::{decode_rgb, ImageLimits};
use crate::runtime::{RuntimeConfig, SessionPool};
use crate::{ExtractError, ExtractOptions, Extraction, Extractor, Quality};
use biomatch_core::{Modality, ModelId, Template};
use rayon::prelude::*;

/// Output dimension of both embedders.
pub const DIM: usize = 128;

/// The face embedders biomatch runs (`models/manifest.json` says where each comes from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaceModel {
    /// OpenCV Zoo's SFace (MIT), 112×112 ArcFace frame: `sface@2021dec`. The default.
    SFace,
    /// dlib's ResNet face descriptor v1 (Davis King, CC0), 150×150 dlib face-chip frame
    /// (normalisation inside the graph): `dlib-resnet@v1`.
    DlibResnet,
}

impl FaceModel {
    pub const ALL: [FaceModel; 2] = [FaceModel::SFace, FaceModel::DlibResnet];

    /// The model id its templates are tagged with.
    pub fn id(self) -> ModelId {
        match self {
            FaceModel::SFace => ModelId::new("sface", "2021dec"),
            FaceModel::DlibResnet => ModelId::new("dlib-resnet", "v1"),
        }
        .expect("valid model id")
    }

    /// The model with this id.
    pub fn from_id(id: &ModelId) -> Option<FaceModel> {
        Self::ALL.into_iter().find(|m| m.id() == *id)
    }

    /// File in the models folder, input name, output name.
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            FaceModel::SFace => ("sface.onnx", "data", "fc1"),
            FaceModel::DlibResnet => ("dlib_resnet.onnx", "data", "embedding"),
        }
    }

    /// The input crop: its reference points for YuNet's five landmarks, and its side.
    pub fn frame(self) -> (&'static [[f32; 2]; 5], usize) {
        match self {
            FaceModel::SFace => (&align::TEMPLATE, align::SIZE),
            FaceModel::DlibResnet => (&DLIB_TEMPLATE, 150),
        }
    }
}

/// YuNet's five points in dlib's 150×150 face chip (padding 0.25), from dlib's 68-point mean
/// face: the eye centres (points 36–41, 42–47), the nose tip (30), the mouth corners (48, 54).
const DLIB_TEMPLATE: [[f32; 2]; 5] = [
    [47.5492, 46.5990],
    [100.4761, 46.5990],
    [74.0127, 76.5625],
    [50.4149, 103.0233],
    [97.6104, 103.0233],
];

/// The default smallest distance between the eyes, in original pixels ([`FaceConfig`]).
pub const MIN_INTER_EYE_PX: f32 = 20.0;

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
    /// The embedder.
    pub model: FaceModel,
    /// Compute the capture-quality measures ([`quality::FaceMeasures`]) with each extraction;
    /// off only to measure what they cost.
    pub measure_quality: bool,
    /// Measure `eye_aperture` with the eye model ([`eyes`]: `face_mesh.onnx`,
    /// `iris_landmark.onnx`) along with the other measures. Off: closed eyes go unnoticed.
    pub eye_model: bool,
}

impl FaceConfig {
    pub fn new(runtime: RuntimeConfig) -> Self {
        Self {
            runtime,
            limits: ImageLimits::default(),
            policy: MultiFacePolicy::Largest,
            min_inter_eye_px: MIN_INTER_EYE_PX,
            model: FaceModel::SFace,
            measure_quality: true,
            eye_model: true,
        }
    }
}

/// YuNet + an embedder through pooled ONNX Runtime sessions.
#[derive(Debug)]
pub struct FaceExtractor {
    model: ModelId,
    kind: FaceModel,
    config: FaceConfig,
    detector: SessionPool,
    embedder: SessionPool,
    eyes: Option<eyes::EyeModel>,
    pad: Option<std::sync::Arc<dyn pad::PresentationAttackDetector>>,
}

impl FaceExtractor {
    /// The model id of the default embedder's (SFace's) templates.
    pub fn model_id() -> ModelId {
        FaceModel::SFace.id()
    }

    /// Load the detector and the configured embedder (`yunet.onnx` and `sface.onnx` or
    /// `dlib_resnet.onnx` in the models folder), and the eye model where the measures and it
    /// are on.
    pub fn new(config: FaceConfig) -> Result<Self, ExtractError> {
        let dir = &config.runtime.models_dir;
        let detector = SessionPool::new(&config.runtime, &dir.join("yunet.onnx"))?;
        let kind = config.model;
        let embedder = SessionPool::new(&config.runtime, &dir.join(kind.files().0))?;
        let eyes = (config.measure_quality && config.eye_model)
            .then(|| eyes::EyeModel::new(&config.runtime))
            .transpose()?;
        Ok(Self { model: kind.id(), kind, config, detector, embedder, eyes, pad: None })
    }

    /// Score every extraction with a presentation-attack detector ([`pad`]).
    pub fn with_pad(mut self, pad: std::sync::Arc<dyn pad::PresentationAttackDetector>) -> Self {
        self.pad = Some(pad);
        self
    }

    /// The embedder.
    pub fn face_model(&self) -> FaceModel {
        self.kind
    }

    /// The embedder's input crop for a detected face (RGB NCHW 0–255).
    pub fn align(&self, img: &image::RgbImage, landmarks: &[[f32; 2]; 5]) -> Vec<f32> {
        let (template, size) = self.kind.frame();
        align::align_to(img, landmarks, template, size)
    }

    /// The raw (un-normalised) embedding of a crop made by [`FaceExtractor::align`].
    pub fn embed(&self, crop: &[f32]) -> Result<Vec<f32>, ExtractError> {
        let (_, input_name, output_name) = self.kind.files();
        let size = self.kind.frame().1;
        if crop.len() != 3 * size * size {
            return Err(ExtractError::Runtime(format!(
                "the {} crop has {} values, not 3x{size}x{size}",
                self.model,
                crop.len()
            )));
        }
        let v = self.embedder.run_one(input_name, &[1, 3, size, size], crop, output_name)?;
        if v.len() != DIM {
            return Err(ExtractError::Runtime(format!("embedder returned {} values", v.len())));
        }
        Ok(v)
    }

    /// The quality measures of a detected face of `img` ([`quality`], and `eye_aperture` where
    /// the eye model is loaded), whether or not this extractor measures with each extraction.
    pub fn measure(
        &self,
        img: &image::RgbImage,
        face: &detect::Face,
    ) -> Result<quality::FaceMeasures, ExtractError> {
        let mut m = quality::measure(face, &align::align(img, &face.landmarks));
        if let Some(eyes) = &self.eyes {
            m.eye_aperture = Some(eyes.aperture(img, &face.landmarks)?);
        }
        Ok(m)
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
        self.extract_with(image, modality, ExtractOptions::default())
    }

    fn extract_with(
        &self,
        image: &[u8],
        modality: Modality,
        options: ExtractOptions,
    ) -> Result<Extraction, ExtractError> {
        if modality != Modality::Face {
            return Err(ExtractError::Runtime(format!(
                "the face extractor cannot extract {modality}"
            )));
        }
        let (img, faces) = self.detect(image)?;
        let face = match (faces.len(), self.config.policy) {
            (0, _) => return Err(ExtractError::NoFace),
            (n, MultiFacePolicy::Reject) if n > 1 => return Err(ExtractError::SeveralFaces(n)),
            _ => detect::largest(&faces).expect("non-empty"),
        };
        let inter_eye_px = face.inter_eye();
        if inter_eye_px < self.config.min_inter_eye_px {
            return Err(ExtractError::FaceTooSmall {
                inter_eye_px,
                min: self.config.min_inter_eye_px,
            });
        }
        // The measures are defined on the 112×112 ArcFace crop, whichever the embedder.
        let crop = align::align(&img, &face.landmarks);
        let mut measures = self.config.measure_quality.then(|| quality::measure(face, &crop));
        let attack_score = match &self.pad {
            Some(p) => Some(p.attack_score(&img, face)?),
            None => None,
        };
        let embed = || match self.kind {
            FaceModel::SFace => self.embed(&crop),
            _ => self.embed(&self.align(&img, &face.landmarks)),
        };
        let eyes = self.eyes.as_ref().filter(|_| measures.is_some() && options.eye_state);
        let raw = match eyes {
            // The eye model runs beside the embedder: where a core is free it adds CPU time,
            // not latency.
            Some(eyes) => {
                let (raw, aperture) = rayon::join(embed, || eyes.aperture(&img, &face.landmarks));
                if let Some(m) = measures.as_mut() {
                    m.eye_aperture = Some(aperture?);
                }
                raw?
            }
            None => embed()?,
        };
        let template = Template::new(self.model.clone(), DIM, raw)
            .map_err(|e| ExtractError::Runtime(format!("embedding: {e}")))?;
        Ok(Extraction {
            modality,
            template,
            quality: Quality {
                detector_score: face.score,
                inter_eye_px,
                sharpness: measures
                    .as_ref()
                    .map_or_else(|| align::sharpness(&crop), |m| m.sharpness),
                faces: faces.len(),
                bbox: face.bbox,
                measures,
                attack_score,
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
