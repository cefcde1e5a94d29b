//! One capture of a master: placement, elastic distortion, partial contact, skin condition and
//! sensor noise.
//!
//! The output pixel `p` is mapped back into master coordinates (inverse mapping, so every output
//! pixel is sampled exactly once): first the global placement (rotation about the canvas centre
//! and translation), then the non-linear distortion of Cappelli, Maio & Maltoni (2001): inside the
//! close-contact region the skin does not move, outside it the displacement of an affine map
//! (small rotation, translation and scale) is applied progressively ("brake" function), so the
//! distortion grows with the distance from the contact region. The master's ridge value there is
//! turned into ink with a spatially varying threshold (dry skin: thin, broken ridges; wet skin:
//! thick, merging ridges), faded by the pressure over an irregular elliptic contact region, then
//! blurred and given sensor noise.

use super::field::{normal, uniform, Area, SmoothNoise};
use super::{FingerSynthConfig, GrayImage, MasterPrint};
use crate::rng::Ziggurat;
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

/// Smoothstep of `x` over `[0, 1]`.
#[inline]
fn smooth01(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Bilinear sample of `img` (`w × h`) at `(x, y)`; `0` outside.
#[inline]
fn bilinear(img: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    if !(x >= 0.0 && y >= 0.0) {
        return 0.0;
    }
    let (x0, y0) = (x as usize, y as usize);
    if x0 + 1 >= w || y0 + 1 >= h {
        return 0.0;
    }
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let i = y0 * w + x0;
    let top = img[i] + (img[i + 1] - img[i]) * fx;
    let bot = img[i + w] + (img[i + w + 1] - img[i + w]) * fx;
    top + (bot - top) * fy
}

/// Where a capture puts the finger: rotation (radians), translation (px) and the contact
/// ellipse (centre and radii, master coordinates: around the cores, or the area centre). Drawn
/// in this order by both the image renderer and the minutiae-level generator (`fast.rs`).
pub(crate) struct Placement {
    pub rot: f32,
    pub tx: f32,
    pub ty: f32,
    pub ccx: f32,
    pub ccy: f32,
    pub crx: f32,
    pub cry: f32,
}

impl Placement {
    pub(crate) fn draw(
        cfg: &FingerSynthConfig,
        cores: &[(f32, f32)],
        area: Area,
        rng: &mut impl RngCore,
    ) -> Self {
        let rot = normal(rng, 0.0, f64::from(cfg.max_rotation_deg) / 2.0)
            .clamp(-f64::from(cfg.max_rotation_deg), f64::from(cfg.max_rotation_deg))
            .to_radians() as f32;
        let tmax = f64::from(cfg.max_translation_px);
        let tx = uniform(rng, -tmax, tmax) as f32;
        let ty = uniform(rng, -tmax, tmax) as f32;
        let (fx, fy) = if cores.is_empty() {
            (area.cx, area.cy - 20.0)
        } else {
            let n = cores.len() as f32;
            (
                cores.iter().map(|c| c.0).sum::<f32>() / n,
                cores.iter().map(|c| c.1).sum::<f32>() / n + 30.0,
            )
        };
        let focus = ((fx + area.cx) / 2.0, (fy + area.cy) / 2.0);
        let partial = uniform(rng, 0.0, 1.0) < f64::from(cfg.partial_probability);
        let (mut crx, mut cry) =
            (uniform(rng, 125.0, 175.0) as f32, uniform(rng, 150.0, 215.0) as f32);
        let mut ccx = focus.0 + normal(rng, 0.0, 12.0) as f32;
        let mut ccy = focus.1 + normal(rng, 0.0, 15.0) as f32;
        if partial {
            let f = uniform(rng, 0.6, 0.85) as f32;
            crx *= f;
            cry *= f;
            let a = uniform(rng, 0.0, std::f64::consts::TAU);
            let d = uniform(rng, 25.0, 60.0) as f32;
            ccx += d * libm::cos(a) as f32;
            ccy += d * libm::sin(a) as f32;
        }
        Placement { rot, tx, ty, ccx, ccy, crx, cry }
    }
}

/// A capture's elastic distortion (Cappelli, Maio & Maltoni 2001): the close-contact fraction of
/// the ellipse, the brake scale, the rotation `psi` (radians), scale and shift of the outer part.
pub(crate) struct Distortion {
    pub inner: f32,
    pub brake_k: f32,
    pub psi: f32,
    pub scale: f32,
    pub shift: (f32, f32),
}

impl Distortion {
    pub(crate) fn draw(cfg: &FingerSynthConfig, rng: &mut impl RngCore) -> Self {
        let dist = f64::from(cfg.distortion);
        let inner = uniform(rng, 0.25, 0.5) as f32;
        let brake_k = uniform(rng, 0.35, 0.7) as f32;
        let psi = (normal(rng, 0.0, 2.5 * dist).clamp(-6.0 * dist, 6.0 * dist)).to_radians() as f32;
        let scale = 1.0 + normal(rng, 0.0, 0.02 * dist).clamp(-0.05 * dist, 0.05 * dist) as f32;
        let shift = (normal(rng, 0.0, 5.0 * dist) as f32, normal(rng, 0.0, 5.0 * dist) as f32);
        Distortion { inner, brake_k, psi, scale, shift }
    }
}

pub(crate) fn render(cfg: &FingerSynthConfig, m: &MasterPrint, rng: &mut ChaCha8Rng) -> GrayImage {
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    let (mw, mh) = (m.width as usize, m.height as usize);
    let area = m.area;

    // Placement and contact region.
    let Placement { rot, tx, ty, ccx, ccy, crx, cry } = Placement::draw(cfg, &m.cores, area, rng);
    let (rs, rc) = (libm::sinf(-rot), libm::cosf(-rot));
    let (ox, oy) = (w as f32 / 2.0 + tx, h as f32 / 2.0 + ty);
    let contact_edge = uniform(rng, 0.06, 0.16) as f32;
    let contact_noise = SmoothNoise::new(rng, m.width, m.height, 36.0);

    // Elastic distortion (inverse map): close-contact ellipse and the displacement outside it.
    let Distortion { inner, brake_k, psi, scale, shift } = Distortion::draw(cfg, rng);
    let (ps, pc) = (libm::sinf(psi) * scale, libm::cosf(psi) * scale);

    // Skin condition: threshold on the master's ridge value (> 0 dry, < 0 wet).
    let condition = (normal(rng, 0.0, f64::from(cfg.skin_variation) * 0.25) as f32)
        .clamp(-0.3 * cfg.skin_variation, 0.45 * cfg.skin_variation);
    // Slowly varying fields at output coordinates: skin condition, background, pressure.
    let slow = SmoothNoise::new(rng, cfg.width, cfg.height, 48.0);
    let cond_amp = uniform(rng, 0.1, 0.3) as f32 * cfg.skin_variation;
    let speckle = SmoothNoise::new(rng, cfg.width, cfg.height, 3.0);
    let dry = ((condition - 0.1) * 2.5).clamp(0.0, 1.0);

    // Intensities.
    let bg = uniform(rng, 215.0, 250.0) as f32;
    let bg_amp = uniform(rng, 0.0, 10.0) as f32;
    let dark = uniform(rng, 10.0, 80.0) as f32;
    let valley = uniform(rng, 0.0, 30.0) as f32;
    let pressure_amp = uniform(rng, 0.0, 0.35) as f32;

    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32 - ox, y as f32 - oy);
            // Global placement, inverse: rotate back about the canvas centre.
            let mut u = rc * px - rs * py + area.cx;
            let mut v = rs * px + rc * py + area.cy;
            // Contact ellipse coordinates.
            let (ex, ey) = ((u - ccx) / crx, (v - ccy) / cry);
            let rho = (ex * ex + ey * ey).sqrt();
            if rho > inner {
                // Brake: 0 at the close-contact boundary, tending to 1 away from it.
                let b = (rho - inner) / brake_k;
                let brake = b * b / (1.0 + b * b);
                let (dx, dy) = (u - ccx, v - ccy);
                u += brake * (pc * dx - ps * dy + shift.0 - dx);
                v += brake * (ps * dx + pc * dy + shift.1 - dy);
            }
            let [cond_n, bg_n, pressure_n] = slow.at(x as f32, y as f32);
            let background = bg + bg_amp * bg_n;
            let rho_c = rho + 0.12 * contact_noise.at(u, v)[0];
            let contact = smooth01((1.0 - rho_c) / contact_edge);
            if contact <= 0.0 {
                out[y * w + x] = background;
                continue;
            }
            let in_area = smooth01(-area.distance(u, v) / 10.0);
            let pressure = contact * in_area * (1.0 - pressure_amp * 0.5 * (1.0 + pressure_n));
            if pressure <= 0.0 {
                out[y * w + x] = background;
                continue;
            }
            let r = bilinear(&m.ridges, mw, mh, u, v);
            // Less pressure: only the ridge crests touch, so the threshold rises at the edge.
            let t = condition + cond_amp * cond_n + 0.5 * (1.0 - pressure);
            let mut ink = smooth01((r - t) / 0.7 + 0.5);
            if dry > 0.0 {
                let s = speckle.at(x as f32, y as f32)[0];
                ink *= 1.0 - dry * smooth01((s - 0.2) * 3.0);
            }
            out[y * w + x] = background - pressure * (valley + (background - valley - dark) * ink);
        }
    }

    // Optical blur: separable [a, 1 - 2a, a], once or twice.
    let passes = 1 + usize::from(uniform(rng, 0.0, 1.0) < 0.4);
    let a = uniform(rng, 0.12, 0.3) as f32;
    let mut tmp = vec![0.0f32; w * h];
    for _ in 0..passes {
        for y in 0..h {
            let row = &out[y * w..(y + 1) * w];
            let dst = &mut tmp[y * w..(y + 1) * w];
            dst[0] = row[0];
            dst[w - 1] = row[w - 1];
            for x in 1..w - 1 {
                dst[x] = a * (row[x - 1] + row[x + 1]) + (1.0 - 2.0 * a) * row[x];
            }
        }
        out[..w].copy_from_slice(&tmp[..w]);
        out[(h - 1) * w..].copy_from_slice(&tmp[(h - 1) * w..]);
        for y in 1..h - 1 {
            for x in 0..w {
                let i = y * w + x;
                out[i] = a * (tmp[i - w] + tmp[i + w]) + (1.0 - 2.0 * a) * tmp[i];
            }
        }
    }

    // Sensor noise.
    let sd = uniform(rng, 2.0, 8.0) * f64::from(cfg.noise);
    let z = Ziggurat::get();
    let pixels = out
        .iter()
        .map(|&v| {
            let n = (sd * z.sample(rng)) as f32;
            libm::roundf((v + n).clamp(0.0, 255.0)) as u8
        })
        .collect();
    GrayImage { width: cfg.width, height: cfg.height, pixels }
}
