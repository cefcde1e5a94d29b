//! Five-point similarity alignment to the standard 112×112 ArcFace template, and a sharpness
//! measure of the aligned crop.
//!
//! The similarity transform (rotation, uniform scale, translation; no reflection) mapping the
//! detected landmarks onto the template is the least-squares one (Umeyama 1991). The crop is
//! sampled bilinearly through the inverse transform with replicated borders, as OpenCV's
//! `warpAffine(INTER_LINEAR, BORDER_REPLICATE)`.

use super::detect::bilinear;
use image::RgbImage;

pub const SIZE: usize = 112;

/// ArcFace reference landmarks for a 112×112 crop.
pub const TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// `[a, b, tx, ty]` of the similarity `x' = a·x − b·y + tx`, `y' = b·x + a·y + ty` that maps
/// `src` onto `dst` in the least-squares sense.
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> [f64; 4] {
    let n = src.len() as f64;
    let mean = |p: &[[f32; 2]; 5]| {
        let (sx, sy) =
            p.iter().fold((0.0, 0.0), |(a, b), q| (a + f64::from(q[0]), b + f64::from(q[1])));
        (sx / n, sy / n)
    };
    let (msx, msy) = mean(src);
    let (mdx, mdy) = mean(dst);
    // For 2-D similarities the Umeyama solution reduces to: a = Σ(s·d)/Σ|s|², b = Σ(s×d)/Σ|s|².
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy) = (f64::from(s[0]) - msx, f64::from(s[1]) - msy);
        let (dx, dy) = (f64::from(d[0]) - mdx, f64::from(d[1]) - mdy);
        dot += sx * dx + sy * dy;
        cross += sx * dy - sy * dx;
        norm += sx * sx + sy * sy;
    }
    let norm = norm.max(1e-12);
    let (a, b) = (dot / norm, cross / norm);
    [a, b, mdx - (a * msx - b * msy), mdy - (b * msx + a * msy)]
}

/// The aligned 112×112 crop as an RGB NCHW f32 tensor (0–255).
pub fn align(img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Vec<f32> {
    align_to(img, landmarks, &TEMPLATE, SIZE)
}

/// The `size`×`size` crop whose five reference points are `template`, as an RGB NCHW f32
/// tensor (0–255): the same transform and sampling as [`align`], for a model with another
/// input frame.
pub fn align_to(
    img: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    template: &[[f32; 2]; 5],
    size: usize,
) -> Vec<f32> {
    let [a, b, tx, ty] = similarity(landmarks, template);
    // Inverse of [[a, −b], [b, a]]: [[a, b], [−b, a]] / (a² + b²).
    let det = (a * a + b * b).max(1e-12);
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for v in 0..size {
        for u in 0..size {
            let (du, dv) = (u as f64 - tx, v as f64 - ty);
            let sx = ((a * du + b * dv) / det) as f32;
            let sy = ((-b * du + a * dv) / det) as f32;
            for c in 0..3 {
                out[c * plane + v * size + u] = bilinear(img, sx, sy, c);
            }
        }
    }
    out
}

/// Variance of the 4-neighbour Laplacian of the grey crop (ITU-R 601 luma).
pub fn sharpness(crop: &[f32]) -> f32 {
    let plane = SIZE * SIZE;
    let g: Vec<f32> = (0..plane)
        .map(|i| 0.299 * crop[i] + 0.587 * crop[plane + i] + 0.114 * crop[2 * plane + i])
        .collect();
    let mut vals = Vec::with_capacity((SIZE - 2) * (SIZE - 2));
    for y in 1..SIZE - 1 {
        for x in 1..SIZE - 1 {
            let i = y * SIZE + x;
            vals.push(g[i - 1] + g[i + 1] + g[i - SIZE] + g[i + SIZE] - 4.0 * g[i]);
        }
    }
    let mean = vals.iter().sum::<f32>() / vals.len() as f32;
    vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / vals.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        // dst = 2·R(30°)·src + (5, −3)
        let (c, s) = (30f64.to_radians().cos() * 2.0, 30f64.to_radians().sin() * 2.0);
        let src = TEMPLATE;
        let mut dst = [[0f32; 2]; 5];
        for (d, p) in dst.iter_mut().zip(&src) {
            let (x, y) = (f64::from(p[0]), f64::from(p[1]));
            *d = [(c * x - s * y + 5.0) as f32, (s * x + c * y - 3.0) as f32];
        }
        let [a, b, tx, ty] = similarity(&src, &dst);
        for (got, want) in [(a, c), (b, s), (tx, 5.0), (ty, -3.0)] {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
    }

    #[test]
    fn aligning_the_template_onto_itself_is_identity() {
        let img = RgbImage::from_fn(112, 112, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let t = align(&img, &TEMPLATE);
        assert!(
            (t[5 * SIZE + 9] - 9.0).abs() < 1e-3
                && (t[SIZE * SIZE + 5 * SIZE + 9] - 5.0).abs() < 1e-3
        );
        assert!(sharpness(&t) < 1e-3, "a linear ramp has no Laplacian");
    }
}
