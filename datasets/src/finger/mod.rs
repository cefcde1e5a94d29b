//! SFinGe-style synthetic fingerprint images (Cappelli, Maio & Maltoni), 500 dpi, grayscale,
//! dark ridges on a light background like a livescan plain impression.
//!
//! It exists so that image-based pipelines (minutiae extraction, MCC / Bozorth3 matching,
//! pre-selection) can be evaluated on tens of thousands of fingers reproducibly, without
//! biometric data. It touches no file system; [`GrayImage::to_png`] only encodes in memory.
//!
//! # Two stages
//!
//! * [`master`]`(cfg, finger)`: the finger itself. Its class is drawn with realistic frequencies
//!   ([`FingerClass`]), singular points are placed per class, the orientation field follows the
//!   Sherlock–Monro zero-pole model with a per-singularity piecewise-linear angle correction
//!   (Vizcaya & Gerhardt) and a smooth random perturbation (arches use an analytic arch field),
//!   the ridge period varies smoothly between about 8 and 11 px, and ridges are grown by
//!   iterated Gabor filtering from a few random seed impulses until the fingerprint area is
//!   filled. Where patches grown from different seeds meet, and where the field diverges, ridges
//!   end or bifurcate: the minutiae are an outcome of the growth, as in SFinGe.
//! * [`impression`]`(cfg, &master, finger, impression)`: one capture: translation, rotation,
//!   elastic distortion (Cappelli, Maio & Maltoni 2001), partial and uneven contact, dry/wet
//!   skin, blur, noise, contrast and background.
//!
//! Two impressions of one finger share the master's minutiae; different fingers have
//! independent classes, singular points, fields, periods and seeds.
//!
//! # Determinism
//!
//! Every master is a pure function of `(cfg, finger)` and every impression of
//! `(cfg, finger, impression)`: ChaCha8 streams keyed by splitmix64 hashes of the seed, a domain
//! constant and the indices (as in the population generator), `libm` for transcendental functions, single-threaded
//! fixed-order arithmetic. Any finger can be generated alone, on any thread, in any order.
//! [`FINGER_GENERATOR_VERSION`] changes whenever that would no longer hold for a config.
//!
//! # Cost
//!
//! A master takes tens of milliseconds and an impression a few milliseconds (release build, one
//! core); parallelise over fingers (rayon), never inside one.

pub mod fast;
mod field;
mod grow;
mod impression;
mod minutiae;

use crate::rng::StreamKey;
use field::{Area, FieldGrid, OrientationModel, PeriodModel};
use serde::{Deserialize, Serialize};

pub use minutiae::{Minutia, MinutiaKind};

/// Version of the image generation algorithm; bumped whenever the same config would yield
/// other pixels.
pub const FINGER_GENERATOR_VERSION: u32 = 1;

/// Stream domains (distinct from those of the face-like population).
const DOMAIN_LAYOUT: u64 = 0x4649_4E47_0000_0001;
const DOMAIN_FIELDS: u64 = 0x4649_4E47_0000_0002;
const DOMAIN_GROWTH: u64 = 0x4649_4E47_0000_0003;
const DOMAIN_IMPRESSION: u64 = 0x4649_4E47_0000_0004;

/// What to generate. All sizes are in pixels at 500 dpi.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FingerSynthConfig {
    /// Master seed: every image is a pure function of `(config, finger, impression)`.
    pub seed: u64,
    /// Canvas width of masters and impressions (the fingerprint area is about 300 × 380 px
    /// at the default 400 × 480 and scales with the canvas).
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// Largest translation of an impression, each axis.
    pub max_translation_px: f32,
    /// Largest rotation of an impression, degrees (drawn from N(0, (max/2)²), clipped).
    pub max_rotation_deg: f32,
    /// Scale of the elastic distortion (0 = none, 1 = typical plain impressions).
    pub distortion: f32,
    /// Probability that an impression has a noticeably partial contact region.
    pub partial_probability: f32,
    /// Scale of dry/wet skin variation (0 = always the same ridge thickness).
    pub skin_variation: f32,
    /// Scale of the sensor noise (0 = none).
    pub noise: f32,
}

impl Default for FingerSynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            width: 400,
            height: 480,
            max_translation_px: 25.0,
            max_rotation_deg: 15.0,
            distortion: 1.0,
            partial_probability: 0.15,
            skin_variation: 1.0,
            noise: 1.0,
        }
    }
}

/// An 8-bit grayscale image, row-major, `0` = black.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` intensities, row by row.
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// Encode as an 8-bit grayscale PNG.
    pub fn to_png(&self) -> Vec<u8> {
        use image::ImageEncoder;
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(&self.pixels, self.width, self.height, image::ExtendedColorType::L8)
            .expect("encoding a well-formed grayscale image to memory cannot fail");
        buf
    }

    /// Intensity at `(x, y)`.
    pub fn get(&self, x: u32, y: u32) -> u8 {
        self.pixels[y as usize * self.width as usize + x as usize]
    }
}

/// Henry class of a master fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FingerClass {
    /// Plain arch: no singular points (≈ 3.7 %).
    Arch,
    /// Tented arch: a core with a delta right below it (≈ 2.9 %).
    TentedArch,
    /// Left loop: one core, the delta to its right in the image (≈ 33.8 %).
    LeftLoop,
    /// Right loop: one core, the delta to its left (≈ 31.7 %).
    RightLoop,
    /// Whorl: two cores and two deltas (≈ 27.9 %).
    Whorl,
}

/// A master fingerprint: the ridge pattern of one finger in its own frame, and its ground truth.
#[derive(Clone)]
pub struct MasterPrint {
    /// Henry class.
    pub class: FingerClass,
    /// Cores `(x, y)` in master pixels (0 for an arch, 1 for loops and tented arches, 2 for whorls).
    pub cores: Vec<(f32, f32)>,
    /// Deltas `(x, y)` in master pixels (may lie outside the fingerprint area).
    pub deltas: Vec<(f32, f32)>,
    /// Canvas width of the master.
    pub width: u32,
    /// Canvas height of the master.
    pub height: u32,
    area: Area,
    field: FieldGrid,
    /// Ridge value per pixel in `[-1, 1]`, positive on ridges, 0 outside the grown domain.
    ridges: Vec<f32>,
}

impl std::fmt::Debug for MasterPrint {
    /// Ground truth only, never the ridge pattern.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterPrint")
            .field("class", &self.class)
            .field("cores", &self.cores)
            .field("deltas", &self.deltas)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl MasterPrint {
    /// Ridge value per pixel (row-major, `width × height`), in `[-1, 1]`, positive on ridges.
    pub fn ridges(&self) -> &[f32] {
        &self.ridges
    }

    /// The ridge pattern as an image (ridges black, valleys and background white), with no
    /// capture effects.
    pub fn ridge_image(&self) -> GrayImage {
        let pixels = self
            .ridges
            .iter()
            .map(|&r| libm::roundf(127.5 - 127.5 * r.clamp(-1.0, 1.0)) as u8)
            .collect();
        GrayImage { width: self.width, height: self.height, pixels }
    }

    /// Model ridge orientation at `(x, y)` in master pixels: the angle of the ridge direction in
    /// `[0, π)`, image coordinates (x right, y down, so positive angles turn clockwise on screen).
    pub fn orientation_at(&self, x: f32, y: f32) -> f32 {
        let (c, s, _) = self.field.sample(x, y);
        let t = 0.5 * libm::atan2f(s, c);
        if t < 0.0 {
            t + std::f32::consts::PI
        } else {
            t
        }
    }

    /// Model ridge period (pixels) at `(x, y)`.
    pub fn period_at(&self, x: f32, y: f32) -> f32 {
        self.field.sample(x, y).2
    }

    /// Whether `(x, y)` lies inside the fingerprint area (the region an impression can show).
    pub fn in_area(&self, x: f32, y: f32) -> bool {
        self.area.distance(x, y) < 0.0
    }

    /// Approximate ground-truth minutiae of the master: ridge endings and bifurcations of the
    /// skeleton of the ridge pattern, at least `margin` pixels inside the fingerprint area. A
    /// diagnostic (counts, density), not an exact annotation.
    pub fn minutiae(&self, margin: f32) -> Vec<Minutia> {
        minutiae::detect(&self.ridges, self.width as usize, self.height as usize, |x, y| {
            self.area.distance(x, y) < -margin
        })
    }
}

/// The class of `finger` alone: the cheap first stage of [`master`] (no field, no image).
pub fn finger_class(cfg: &FingerSynthConfig, finger: u64) -> FingerClass {
    let mut rng = StreamKey::new(cfg.seed, DOMAIN_LAYOUT).rng(finger, 0);
    field::layout(&mut rng, cfg.width, cfg.height).class
}

/// The master fingerprint of `finger`.
///
/// # Panics
/// If the canvas is smaller than 64 × 64.
pub fn master(cfg: &FingerSynthConfig, finger: u64) -> MasterPrint {
    assert!(cfg.width >= 64 && cfg.height >= 64, "canvas too small: {}x{}", cfg.width, cfg.height);
    let mut rng = StreamKey::new(cfg.seed, DOMAIN_LAYOUT).rng(finger, 0);
    let layout = field::layout(&mut rng, cfg.width, cfg.height);
    let mut rng = StreamKey::new(cfg.seed, DOMAIN_FIELDS).rng(finger, 0);
    let orientation = OrientationModel::new(&mut rng, &layout);
    let period = PeriodModel::new(&mut rng, &layout);
    let field = FieldGrid::new(cfg.width, cfg.height, &orientation, &period);
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    // Grow a little beyond the area so that distortion never shows the domain's edge.
    let domain: Vec<bool> =
        (0..w * h).map(|i| layout.area.distance((i % w) as f32, (i / w) as f32) < 12.0).collect();
    let mut rng = StreamKey::new(cfg.seed, DOMAIN_GROWTH).rng(finger, 0);
    let n_seeds = field::uniform(&mut rng, 12.0, 24.0) as usize;
    let ridges = grow::grow(&mut rng, w, h, &domain, &field, n_seeds);
    MasterPrint {
        class: layout.class,
        cores: layout.cores,
        deltas: layout.deltas,
        width: cfg.width,
        height: cfg.height,
        area: layout.area,
        field,
        ridges,
    }
}

/// Impression `impression` of `finger`, whose master is `master` (from [`master`]`(cfg, finger)`).
/// The image has the config's canvas size; it is labelled by `finger`.
pub fn impression(
    cfg: &FingerSynthConfig,
    master: &MasterPrint,
    finger: u64,
    impression: u32,
) -> GrayImage {
    let mut rng = StreamKey::new(cfg.seed, DOMAIN_IMPRESSION).rng(finger, u64::from(impression));
    impression::render(cfg, master, &mut rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;
    use std::sync::OnceLock;

    fn cfg() -> FingerSynthConfig {
        FingerSynthConfig { seed: 42, ..FingerSynthConfig::default() }
    }

    /// Masters are the expensive part: build the few the tests share once.
    fn masters() -> &'static [MasterPrint] {
        static M: OnceLock<Vec<MasterPrint>> = OnceLock::new();
        M.get_or_init(|| (0..3).map(|f| master(&cfg(), f)).collect())
    }

    /// Smallest angle between two orientations (mod π).
    fn angle_diff(a: f32, b: f32) -> f32 {
        let d = (a - b).rem_euclid(PI);
        d.min(PI - d)
    }

    fn median(mut v: Vec<f32>) -> f32 {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    }

    /// Ridge orientation (mod π) of the `side × side` block at `(x0, y0)` from the gradient
    /// structure tensor, and its coherence.
    fn block_orientation(img: &[f32], w: usize, x0: usize, y0: usize, side: usize) -> (f32, f32) {
        let (mut gxx, mut gyy, mut gxy) = (0.0f32, 0.0f32, 0.0f32);
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                let gx = img[y * w + x + 1] - img[y * w + x - 1];
                let gy = img[(y + 1) * w + x] - img[(y - 1) * w + x];
                gxx += gx * gx;
                gyy += gy * gy;
                gxy += gx * gy;
            }
        }
        let grad = 0.5 * (2.0 * gxy).atan2(gxx - gyy);
        let coherence = ((gxx - gyy).powi(2) + 4.0 * gxy * gxy).sqrt() / (gxx + gyy + 1e-9);
        ((grad + PI / 2.0).rem_euclid(PI), coherence)
    }

    /// Dominant period along the direction `(nx, ny)` through `(cx, cy)`: first autocorrelation
    /// maximum between 4 and 20 px of a 96-px profile.
    fn profile_period(img: &[f32], w: usize, cx: f32, cy: f32, nx: f32, ny: f32) -> Option<f32> {
        let n = 96;
        let prof: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 - n as f32 / 2.0;
                let (x, y) = ((cx + t * nx).round() as usize, (cy + t * ny).round() as usize);
                img[y * w + x]
            })
            .collect();
        let mean = prof.iter().sum::<f32>() / n as f32;
        let ac: Vec<f32> = (0..24)
            .map(|lag| (0..n - lag).map(|i| (prof[i] - mean) * (prof[i + lag] - mean)).sum())
            .collect();
        (5..20).find(|&l| ac[l] > ac[l - 1] && ac[l] >= ac[l + 1] && ac[l] > 0.0).map(|l| {
            // Parabolic refinement of the peak.
            let (a, b, c) = (ac[l - 1], ac[l], ac[l + 1]);
            let d = a - 2.0 * b + c;
            l as f32 + if d.abs() > 1e-9 { 0.5 * (a - c) / d } else { 0.0 }
        })
    }

    #[test]
    fn same_inputs_give_identical_pixels() {
        let c = cfg();
        let a = master(&c, 1);
        let b = master(&c, 1);
        assert_eq!(a.class, b.class);
        assert_eq!(a.cores, b.cores);
        assert!(a.ridges().iter().zip(b.ridges()).all(|(x, y)| x.to_bits() == y.to_bits()));
        let i0 = impression(&c, &a, 1, 0);
        assert_eq!(i0, impression(&c, &b, 1, 0));
        // On another thread too.
        let c2 = c.clone();
        let other = std::thread::spawn(move || impression(&c2, &master(&c2, 1), 1, 0))
            .join()
            .expect("thread");
        assert_eq!(i0, other);
        assert_eq!(i0.to_png(), other.to_png());
    }

    #[test]
    fn fingers_and_impressions_differ() {
        let c = cfg();
        let m = masters();
        let differ = |a: &GrayImage, b: &GrayImage| {
            a.pixels.iter().zip(&b.pixels).filter(|(x, y)| x.abs_diff(**y) > 40).count()
        };
        let i00 = impression(&c, &m[0], 0, 0);
        let i01 = impression(&c, &m[0], 0, 1);
        let i10 = impression(&c, &m[1], 1, 0);
        assert!(differ(&i00, &i01) > 5_000, "two captures look identical");
        assert!(differ(&i00, &i10) > 5_000, "two fingers look identical");
        // Different fingers have different ridge patterns, not just different placements.
        let same_sign = m[0]
            .ridges()
            .iter()
            .zip(m[1].ridges())
            .filter(|(a, b)| a.abs() > 0.5 && b.abs() > 0.5)
            .map(|(a, b)| f32::from(u8::from((*a > 0.0) == (*b > 0.0))))
            .collect::<Vec<_>>();
        let agree = same_sign.iter().sum::<f32>() / same_sign.len() as f32;
        assert!((0.35..0.65).contains(&agree), "masters 0 and 1 agree on {agree} of pixels");
    }

    #[test]
    fn impressions_have_a_print_and_a_background() {
        let c = cfg();
        for (f, m) in masters().iter().enumerate() {
            for imp in 0..2 {
                let img = impression(&c, m, f as u64, imp);
                let (w, h) = (img.width as usize, img.height as usize);
                assert_eq!(img.pixels.len(), w * h);
                let side = 16;
                let (mut fg, mut bg, mut dark, mut fg_px) = (0usize, 0usize, 0usize, 0usize);
                let mut bg_level = Vec::new();
                for by in (0..h - side).step_by(side) {
                    for bx in (0..w - side).step_by(side) {
                        let px: Vec<f32> = (by..by + side)
                            .flat_map(|y| (bx..bx + side).map(move |x| (x, y)))
                            .map(|(x, y)| f32::from(img.pixels[y * w + x]))
                            .collect();
                        let mean = px.iter().sum::<f32>() / px.len() as f32;
                        let var =
                            px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / px.len() as f32;
                        if var.sqrt() > 30.0 {
                            fg += 1;
                            fg_px += px.len();
                            dark += px.iter().filter(|&&v| v < 128.0).count();
                        } else if var.sqrt() < 12.0 {
                            bg += 1;
                            bg_level.push(mean);
                        }
                    }
                }
                let blocks = (w / side) * (h / side);
                let fg_frac = fg as f32 / blocks as f32;
                assert!((0.08..0.8).contains(&fg_frac), "finger {f}/{imp}: foreground {fg_frac}");
                assert!(bg as f32 / blocks as f32 > 0.1, "finger {f}/{imp}: no background");
                assert!(median(bg_level) > 180.0, "finger {f}/{imp}: background not light");
                let dark_frac = dark as f32 / fg_px as f32;
                assert!(
                    (0.2..0.8).contains(&dark_frac),
                    "finger {f}/{imp}: dark fraction {dark_frac}"
                );
            }
        }
    }

    #[test]
    fn ridges_follow_the_orientation_field() {
        for m in masters() {
            let (w, side) = (m.width as usize, 16);
            let mut errors = Vec::new();
            for by in (8..m.height as usize - side - 8).step_by(side) {
                for bx in (8..w - side - 8).step_by(side) {
                    let (cx, cy) = ((bx + side / 2) as f32, (by + side / 2) as f32);
                    if m.area.distance(cx, cy) > -20.0 {
                        continue;
                    }
                    let (est, _) = block_orientation(m.ridges(), w, bx, by, side);
                    errors.push(angle_diff(est, m.orientation_at(cx, cy)).to_degrees());
                }
            }
            assert!(errors.len() > 200, "{} blocks", errors.len());
            let med = median(errors.clone());
            let within = errors.iter().filter(|&&e| e < 20.0).count() as f32 / errors.len() as f32;
            assert!(med < 15.0, "{:?}: median error {med}°", m.class);
            assert!(within > 0.75, "{:?}: only {within} of blocks within 20°", m.class);
        }
    }

    #[test]
    fn ridge_period_is_about_nine_pixels() {
        let c = cfg();
        for (f, m) in masters().iter().enumerate() {
            // On the impression: what an extractor sees (placement and distortion included).
            let img = impression(&c, m, f as u64, 0);
            let (w, h) = (img.width as usize, img.height as usize);
            let pix: Vec<f32> = img.pixels.iter().map(|&p| f32::from(p)).collect();
            let mut periods = Vec::new();
            for by in (60..h - 76).step_by(24) {
                for bx in (60..w - 76).step_by(24) {
                    let (theta, coherence) = block_orientation(&pix, w, bx, by, 16);
                    if coherence < 0.6 {
                        continue;
                    }
                    let (nx, ny) = (-theta.sin(), theta.cos());
                    let (cx, cy) = ((bx + 8) as f32, (by + 8) as f32);
                    if let Some(p) = profile_period(&pix, w, cx, cy, nx, ny) {
                        periods.push(p);
                    }
                }
            }
            assert!(periods.len() > 30, "finger {f}: {} blocks", periods.len());
            let med = median(periods);
            assert!((7.0..12.0).contains(&med), "finger {f}: median period {med}");
        }
    }

    #[test]
    fn masters_have_minutiae() {
        for m in masters() {
            let mins = m.minutiae(12.0);
            let endings = mins.iter().filter(|x| x.kind == MinutiaKind::Ending).count();
            let bifurcations = mins.len() - endings;
            assert!((15..120).contains(&mins.len()), "{:?}: {} minutiae", m.class, mins.len());
            assert!(
                endings >= 3 && bifurcations >= 3,
                "{endings} endings, {bifurcations} bifurcations"
            );
        }
    }

    #[test]
    fn singular_points_match_the_class() {
        let c = cfg();
        for f in 0..300 {
            let mut rng = StreamKey::new(c.seed, DOMAIN_LAYOUT).rng(f, 0);
            let l = field::layout(&mut rng, c.width, c.height);
            assert_eq!(l.class, finger_class(&c, f));
            let (nc, nd) = match l.class {
                FingerClass::Arch => (0, 0),
                FingerClass::TentedArch | FingerClass::LeftLoop | FingerClass::RightLoop => (1, 1),
                FingerClass::Whorl => (2, 2),
            };
            assert_eq!((l.cores.len(), l.deltas.len()), (nc, nd), "{:?}", l.class);
            for &(x, y) in &l.cores {
                assert!(l.area.distance(x, y) < -40.0, "core ({x}, {y}) near the edge");
            }
            match l.class {
                FingerClass::LeftLoop => assert!(l.deltas[0].0 > l.cores[0].0),
                FingerClass::RightLoop => assert!(l.deltas[0].0 < l.cores[0].0),
                _ => {}
            }
            for &(_, dy) in &l.deltas {
                assert!(dy > l.cores.iter().map(|c| c.1).fold(f32::MIN, f32::max));
            }
        }
    }

    #[test]
    fn class_frequencies_are_realistic() {
        let c = FingerSynthConfig { seed: 7, ..FingerSynthConfig::default() };
        let n = 4000;
        let mut counts = std::collections::HashMap::new();
        for f in 0..n {
            *counts.entry(finger_class(&c, f)).or_insert(0usize) += 1;
        }
        for (class, p) in [
            (FingerClass::Arch, 0.037),
            (FingerClass::TentedArch, 0.029),
            (FingerClass::LeftLoop, 0.338),
            (FingerClass::RightLoop, 0.317),
            (FingerClass::Whorl, 0.279),
        ] {
            let got = counts.get(&class).copied().unwrap_or(0) as f64 / n as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((got - p).abs() < 4.0 * sd, "{class:?}: {got} vs {p}");
        }
    }

    #[test]
    fn png_round_trips() {
        let img = impression(&cfg(), &masters()[0], 0, 0);
        let png = img.to_png();
        let back = image::load_from_memory(&png).expect("decode").to_luma8();
        assert_eq!(back.as_raw(), &img.pixels);
    }
}
