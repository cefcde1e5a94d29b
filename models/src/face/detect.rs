//! YuNet (2023mar) face detection: letterbox to 640×640, decode the three strides, NMS.
//!
//! The pipeline is specified precisely because `models/tools/face_reference.py` implements the
//! same steps in numpy, and the two must agree (cosine ≥ 0.999 on the embeddings):
//! 1. scale = min(640/w, 640/h); the image is resized to round(w·scale) × round(h·scale) with
//!    bilinear sampling at pixel centres (src = (dst + 0.5)/scale − 0.5, clamped to the image) and
//!    placed at the top-left of a black 640×640 canvas; the tensor is BGR, 0–255, NCHW.
//! 2. For stride s ∈ {8, 16, 32}, cell (r, c) of the (640/s)² grid: score = √(clamp(cls)·clamp(obj));
//!    box centre = ((c + dx)·s, (r + dy)·s), size = (e^dw·s, e^dh·s); landmark j =
//!    ((c + kx_j)·s, (r + ky_j)·s). Coordinates are divided by `scale` to map back.
//! 3. Keep score ≥ 0.6; greedy NMS at IoU 0.3, best score first.

use crate::runtime::SessionPool;
use crate::ExtractError;
use image::RgbImage;
use ort::value::TensorRef;

pub const INPUT: usize = 640;
pub const SCORE_THRESHOLD: f32 = 0.6;
pub const NMS_IOU: f32 = 0.3;
const STRIDES: [usize; 3] = [8, 16, 32];

/// A detected face in original-image coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Face {
    pub score: f32,
    /// x, y, width, height.
    pub bbox: [f32; 4],
    /// right eye, left eye, nose tip, right mouth corner, left mouth corner (x, y).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn area(&self) -> f32 {
        self.bbox[2].max(0.0) * self.bbox[3].max(0.0)
    }

    /// The box's centre as a share of an image `width` × `height` (0–1 each way).
    pub fn centre_share(&self, width: u32, height: u32) -> (f32, f32) {
        let [x, y, w, h] = self.bbox;
        ((x + w / 2.0) / width as f32, (y + h / 2.0) / height as f32)
    }

    pub fn inter_eye(&self) -> f32 {
        let [r, l] = [self.landmarks[0], self.landmarks[1]];
        ((r[0] - l[0]).powi(2) + (r[1] - l[1]).powi(2)).sqrt()
    }
}

/// The largest of `faces` by box area (the one extraction uses under the `largest` policy: the
/// person holding the camera, not the people behind); `None` when there is none.
pub fn largest(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| a.area().total_cmp(&b.area()))
}

/// Bilinear sample of channel `ch` at (x, y), coordinates clamped to the image (replicate).
#[inline]
pub fn bilinear(img: &RgbImage, x: f32, y: f32, ch: usize) -> f32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let raw = img.as_raw();
    let p = |xx: usize, yy: usize| f32::from(raw[(yy * w + xx) * 3 + ch]);
    let top = p(x0, y0) + (p(x1, y0) - p(x0, y0)) * fx;
    let bottom = p(x0, y1) + (p(x1, y1) - p(x0, y1)) * fx;
    top + (bottom - top) * fy
}

/// The letterboxed BGR NCHW tensor and the scale applied.
pub fn letterbox(img: &RgbImage) -> (Vec<f32>, f32) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let scale = (INPUT as f32 / w).min(INPUT as f32 / h);
    let nw = ((w * scale).round() as usize).clamp(1, INPUT);
    let nh = ((h * scale).round() as usize).clamp(1, INPUT);
    let plane = INPUT * INPUT;
    let mut t = vec![0f32; 3 * plane];
    for y in 0..nh {
        let sy = (y as f32 + 0.5) / scale - 0.5;
        for x in 0..nw {
            let sx = (x as f32 + 0.5) / scale - 0.5;
            for c in 0..3 {
                // RGB source → BGR planes.
                t[(2 - c) * plane + y * INPUT + x] = bilinear(img, sx, sy, c);
            }
        }
    }
    (t, scale)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let (ax2, ay2, bx2, by2) = (a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]);
    let iw = (ax2.min(bx2) - a[0].max(b[0])).max(0.0);
    let ih = (ay2.min(by2) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression, best score first.
pub fn nms(mut faces: Vec<Face>, iou_threshold: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Face> = Vec::new();
    for f in faces {
        if keep.iter().all(|k| iou(&k.bbox, &f.bbox) <= iou_threshold) {
            keep.push(f);
        }
    }
    keep
}

/// Decode the 12 YuNet outputs (cls, obj, bbox, kps per stride) into faces in letterbox pixels.
pub fn decode(outputs: &[&[f32]; 12], scale: f32) -> Vec<Face> {
    let mut faces = Vec::new();
    for (si, &s) in STRIDES.iter().enumerate() {
        let cols = INPUT / s;
        let (cls, obj, bbox, kps) =
            (outputs[si], outputs[3 + si], outputs[6 + si], outputs[9 + si]);
        for idx in 0..cols * cols {
            let score = (cls[idx].clamp(0.0, 1.0) * obj[idx].clamp(0.0, 1.0)).sqrt();
            if score < SCORE_THRESHOLD {
                continue;
            }
            let (r, c) = ((idx / cols) as f32, (idx % cols) as f32);
            let sf = s as f32;
            let b = &bbox[idx * 4..idx * 4 + 4];
            let (cx, cy) = ((c + b[0]) * sf, (r + b[1]) * sf);
            let (bw, bh) = (b[2].exp() * sf, b[3].exp() * sf);
            let k = &kps[idx * 10..idx * 10 + 10];
            let mut landmarks = [[0f32; 2]; 5];
            for (j, lm) in landmarks.iter_mut().enumerate() {
                *lm = [(c + k[2 * j]) * sf / scale, (r + k[2 * j + 1]) * sf / scale];
            }
            faces.push(Face {
                score,
                bbox: [(cx - bw / 2.0) / scale, (cy - bh / 2.0) / scale, bw / scale, bh / scale],
                landmarks,
            });
        }
    }
    nms(faces, NMS_IOU)
}

const OUTPUT_NAMES: [&str; 12] = [
    "cls_8", "cls_16", "cls_32", "obj_8", "obj_16", "obj_32", "bbox_8", "bbox_16", "bbox_32",
    "kps_8", "kps_16", "kps_32",
];

/// Run the detector on an image; faces in original-image coordinates, best first.
pub fn detect(pool: &SessionPool, img: &RgbImage) -> Result<Vec<Face>, ExtractError> {
    let (tensor, scale) = letterbox(img);
    pool.with(|session| {
        let input = TensorRef::from_array_view(([1usize, 3, INPUT, INPUT], &tensor[..]))?;
        let out = session.run(ort::inputs!["input" => input])?;
        let mut views: Vec<&[f32]> = Vec::with_capacity(12);
        for (i, name) in OUTPUT_NAMES.iter().enumerate() {
            let (_, data) = out[*name].try_extract_tensor::<f32>()?;
            let cells = (INPUT / STRIDES[i % 3]).pow(2);
            let per = [1, 1, 4, 10][i / 3];
            if data.len() != cells * per {
                return Err(ExtractError::Runtime(format!(
                    "detector output {name} has {} values",
                    data.len()
                )));
            }
            views.push(data);
        }
        let arr: [&[f32]; 12] = views.try_into().expect("12 outputs");
        Ok(decode(&arr, scale))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let f = |score, x| Face { score, bbox: [x, 0.0, 10.0, 10.0], landmarks: [[0.0; 2]; 5] };
        let kept = nms(vec![f(0.7, 0.0), f(0.9, 1.0), f(0.8, 50.0)], 0.3);
        assert_eq!(kept.iter().map(|f| f.score).collect::<Vec<_>>(), vec![0.9, 0.8]);
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads() {
        let img = RgbImage::from_pixel(320, 160, image::Rgb([200, 100, 50]));
        let (t, scale) = letterbox(&img);
        assert_eq!(scale, 2.0);
        let plane = INPUT * INPUT;
        // BGR order, uniform colour inside, black padding below row 320.
        assert_eq!((t[0], t[plane], t[2 * plane]), (50.0, 100.0, 200.0));
        assert_eq!(t[330 * INPUT + 10], 0.0);
    }
}
