//! Eye openness from learned eyelid landmarks: MediaPipe's face mesh (468 points) finds each
//! eye's corners, MediaPipe's iris landmark model then traces each eyelid's contour on a 64×64
//! crop around the eye, and the aperture is the lids' mean distance over the eye's width.
//!
//! Both models are Google's (Apache-2.0), shipped as TFLite in the `mediapipe==0.10.14` wheel and
//! converted to ONNX at set-up (`models/tools/mediapipe/convert_tflite.py`,
//! `scripts/fetch-models.sh`); inputs are NHWC RGB in 0–1. The crop statistics of
//! [`super::quality`] cannot tell a shut lid with dark lashes from an open eye (measured in
//! `docs/face-quality.md`); this can.

use super::align::{align_to, TEMPLATE};
use crate::runtime::{RuntimeConfig, SessionPool};
use crate::ExtractError;
use image::RgbImage;

/// Side of the face mesh's input.
pub const MESH_SIZE: usize = 192;
/// Side of the iris model's input.
pub const EYE_SIZE: usize = 64;
/// The face-mesh frame: the ArcFace template scaled by 1.7 about (56, 62) into 192×192, which
/// frames the face the way MediaPipe's detector-based region of interest (the face box × 1.5)
/// does.
const MESH_SCALE: f32 = 1.7;
/// The eye crop's side over the eye's corner-to-corner width (MediaPipe's own ROI).
const EYE_ROI: f32 = 2.3;
/// Mesh points: the image-left eye's outer and inner corners, then the image-right eye's.
const LEFT_CORNERS: (usize, usize) = (33, 133);
const RIGHT_CORNERS: (usize, usize) = (362, 263);

/// The face-mesh frame's reference points for YuNet's five landmarks.
pub fn mesh_template() -> [[f32; 2]; 5] {
    let c = MESH_SIZE as f32 / 2.0;
    TEMPLATE.map(|p| [(p[0] - 56.0) * MESH_SCALE + c, (p[1] - 62.0) * MESH_SCALE + c])
}

/// The two models, pooled like the extractor's own.
#[derive(Debug)]
pub struct EyeModel {
    mesh: SessionPool,
    iris: SessionPool,
}

impl EyeModel {
    /// `face_mesh.onnx` and `iris_landmark.onnx` in the models folder.
    pub fn new(runtime: &RuntimeConfig) -> Result<Self, ExtractError> {
        let dir = &runtime.models_dir;
        Ok(Self {
            mesh: SessionPool::new(runtime, &dir.join("face_mesh.onnx"))?,
            iris: SessionPool::new(runtime, &dir.join("iris_landmark.onnx"))?,
        })
    }

    /// The lesser of the two eyes' apertures (lid-to-lid distance over corner-to-corner width,
    /// open ≈ 0.15–0.30, shut ≤ 0.11) of the face with these YuNet landmarks.
    pub fn aperture(&self, img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Result<f32, ExtractError> {
        let crop = align_to(img, landmarks, &mesh_template(), MESH_SIZE);
        let points = self.mesh_points(&crop)?;
        let mut eyes = Vec::with_capacity(2 * EYE_SIZE * EYE_SIZE * 3);
        for ((outer, inner), mirror) in [(LEFT_CORNERS, true), (RIGHT_CORNERS, false)] {
            eyes.extend(eye_crop(&crop, points[outer], points[inner], mirror));
        }
        let shape = [2, EYE_SIZE, EYE_SIZE, 3];
        let contours =
            self.iris.run_one("input", &shape, &eyes, "output_eyes_contours_and_brows")?;
        if contours.len() != 2 * 71 * 3 {
            return Err(ExtractError::Runtime(format!(
                "the iris model returned {} values",
                contours.len()
            )));
        }
        let a = contours.chunks(71 * 3).map(lid_aperture).fold(f32::INFINITY, f32::min);
        Ok(a)
    }

    /// The mesh's 468 (x, y) points in the 192×192 frame.
    fn mesh_points(&self, crop: &[f32]) -> Result<Vec<[f32; 2]>, ExtractError> {
        let input = nhwc_unit(crop, MESH_SIZE);
        let v = self.mesh.run_one("input", &[1, MESH_SIZE, MESH_SIZE, 3], &input, "conv2d_21")?;
        if v.len() != 468 * 3 {
            return Err(ExtractError::Runtime(format!(
                "the face mesh returned {} values",
                v.len()
            )));
        }
        Ok(v.chunks(3).map(|p| [p[0], p[1]]).collect())
    }
}

/// NCHW 0–255 → NHWC 0–1.
fn nhwc_unit(crop: &[f32], size: usize) -> Vec<f32> {
    let plane = size * size;
    let mut out = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            out.push(crop[c * plane + i] / 255.0);
        }
    }
    out
}

/// The 64×64 NHWC 0–1 crop of the eye between corners `a` and `b` of the mesh frame: a square
/// [`EYE_ROI`] eye-widths wide on their midpoint, mirrored for the image-left eye (the iris
/// model is trained on the image-right one), sampled bilinearly.
fn eye_crop(frame: &[f32], a: [f32; 2], b: [f32; 2], mirror: bool) -> Vec<f32> {
    let (cx, cy) = ((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0);
    let side = EYE_ROI * ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt().max(1.0);
    let step = side / EYE_SIZE as f32;
    let (x0, y0) = (cx - side / 2.0, cy - side / 2.0);
    let plane = MESH_SIZE * MESH_SIZE;
    let mut out = Vec::with_capacity(EYE_SIZE * EYE_SIZE * 3);
    for v in 0..EYE_SIZE {
        for u in 0..EYE_SIZE {
            let uu = if mirror { EYE_SIZE - 1 - u } else { u };
            let sx = x0 + (uu as f32 + 0.5) * step - 0.5;
            let sy = y0 + (v as f32 + 0.5) * step - 0.5;
            for c in 0..3 {
                out.push(sample(&frame[c * plane..(c + 1) * plane], MESH_SIZE, sx, sy) / 255.0);
            }
        }
    }
    out
}

/// Bilinear sample of a `size`×`size` plane, edges clamped.
fn sample(plane: &[f32], size: usize, x: f32, y: f32) -> f32 {
    let max = (size - 1) as f32;
    let (x, y) = (x.clamp(0.0, max), y.clamp(0.0, max));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| plane[yy * size + xx];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// One eye's aperture from the iris model's 71 (x, y, z) points: the first 16 trace the eye,
/// 0 and 8 its corners, 1–7 the lower lid and 9–15 the upper lid in the same order; the mean of
/// the seven lid-to-lid distances over the corner distance.
fn lid_aperture(p: &[f32]) -> f32 {
    let at = |i: usize| [p[3 * i], p[3 * i + 1]];
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let lids = (1..8).map(|k| dist(at(k), at(8 + k))).sum::<f32>() / 7.0;
    lids / dist(at(0), at(8)).max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_frame_keeps_the_template_shape() {
        let t = mesh_template();
        let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let ratio = d(t[0], t[1]) / d(TEMPLATE[0], TEMPLATE[1]);
        assert!((ratio - MESH_SCALE).abs() < 1e-4);
        // The eyes stay above the frame's centre, the mouth below it.
        assert!(t[0][1] < 96.0 && t[3][1] > 96.0, "{t:?}");
    }

    #[test]
    fn lid_aperture_is_the_mean_lid_gap_over_the_width() {
        // Corners at x = 0 and 16; lower lid y = 0, upper lid y = 4 at every pair: 4 / 16.
        let mut p = vec![0f32; 71 * 3];
        for k in 0..16 {
            let x = if k <= 8 { 2.0 * k as f32 } else { 2.0 * (k - 8) as f32 };
            p[3 * k] = x;
            p[3 * k + 1] = if k > 8 { 4.0 } else { 0.0 };
        }
        assert!((lid_aperture(&p) - 0.25).abs() < 1e-6, "{}", lid_aperture(&p));
    }

    #[test]
    fn the_eye_crop_mirrors_the_image_left_eye() {
        // A frame whose red channel is the column index: mirrored, the crop's columns descend.
        let plane = MESH_SIZE * MESH_SIZE;
        let mut frame = vec![0f32; 3 * plane];
        for (i, v) in frame[..plane].iter_mut().enumerate() {
            *v = (i % MESH_SIZE) as f32;
        }
        let (a, b) = ([80.0, 90.0], [110.0, 90.0]);
        let plain = eye_crop(&frame, a, b, false);
        let mirrored = eye_crop(&frame, a, b, true);
        let red = |c: &[f32], u: usize| c[u * 3] * 255.0;
        assert!(red(&plain, 0) < red(&plain, EYE_SIZE - 1));
        assert!(red(&mirrored, 0) > red(&mirrored, EYE_SIZE - 1));
        assert!((red(&plain, 0) - red(&mirrored, EYE_SIZE - 1)).abs() < 1e-3);
    }
}
