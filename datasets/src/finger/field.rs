//! The master's geometry: class and singular points, the orientation field (Sherlock–Monro
//! zero-pole model with a Vizcaya–Gerhardt-like per-singularity correction and a smooth random
//! perturbation), the ridge-period map and the fingerprint area.
//!
//! Everything here is a pure function of a ChaCha stream; transcendental functions come from
//! `libm` so that values are identical on every platform.

use super::FingerClass;
use crate::rng::Ziggurat;
use rand::{Rng, RngCore};
use std::f64::consts::PI;

/// Spacing in pixels of the grid on which the orientation and period fields are tabulated.
pub(crate) const GRID: usize = 4;

/// Uniform in `[lo, hi)`.
pub(crate) fn uniform(rng: &mut impl RngCore, lo: f64, hi: f64) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    lo + (hi - lo) * u
}

/// `N(mean, sd²)`.
pub(crate) fn normal(rng: &mut impl RngCore, mean: f64, sd: f64) -> f64 {
    mean + sd * Ziggurat::get().sample(rng)
}

/// A smooth random perturbation: a sum of plane waves, `(amplitude, kx, ky, phase)` terms.
#[derive(Clone, Debug)]
pub(crate) struct Waves(Vec<(f64, f64, f64, f64)>);

impl Waves {
    /// `n` waves with wavelength and amplitude uniform in the given ranges, direction and phase
    /// uniform on the circle (drawn in that order per wave: wavelength, direction, amplitude,
    /// phase).
    fn random(
        rng: &mut impl RngCore,
        n: usize,
        wavelength: (f64, f64),
        amplitude: (f64, f64),
    ) -> Self {
        let mut waves = Vec::with_capacity(n);
        for _ in 0..n {
            let wavelength = uniform(rng, wavelength.0, wavelength.1);
            let dir = uniform(rng, 0.0, 2.0 * PI);
            let k = 2.0 * PI / wavelength;
            waves.push((
                uniform(rng, amplitude.0, amplitude.1),
                k * libm::cos(dir),
                k * libm::sin(dir),
                uniform(rng, 0.0, 2.0 * PI),
            ));
        }
        Waves(waves)
    }

    /// `acc` plus every wave's value at `(x, y)`, added in order (the same bits as a loop of
    /// `acc += …`).
    fn add_to(&self, acc: f64, x: f64, y: f64) -> f64 {
        self.0.iter().fold(acc, |acc, &(a, kx, ky, ph)| acc + a * libm::sin(kx * x + ky * y + ph))
    }
}

/// Class and singular points: the cheap first stage of a master.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Layout {
    pub class: FingerClass,
    pub cores: Vec<(f32, f32)>,
    pub deltas: Vec<(f32, f32)>,
    pub area: Area,
}

/// The fingerprint area: a superellipse with separate half-axes per quadrant, centred at
/// `(cx, cy)`. The top is rounder than the bottom, like the pad of a fingertip pressed flat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Area {
    pub cx: f32,
    pub cy: f32,
    pub left: f32,
    pub right: f32,
    pub top: f32,
    pub bottom: f32,
}

impl Area {
    /// `< 1` inside, `1` on the boundary, growing outwards (a superellipse "radius").
    pub(crate) fn radius(&self, x: f32, y: f32) -> f32 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let u = dx / if dx < 0.0 { self.left } else { self.right };
        let v = (dy / if dy < 0.0 { self.top } else { self.bottom }).abs();
        // Elliptic above the centre; flatter sides and bottom below it (|v|³).
        let vv = if dy < 0.0 { v * v } else { v * v * v };
        (u * u + vv).sqrt()
    }

    /// Approximate signed distance in pixels to the boundary (negative inside).
    pub(crate) fn distance(&self, x: f32, y: f32) -> f32 {
        let r = self.radius(x, y);
        let scale = 0.25 * (self.left + self.right + self.top + self.bottom);
        (r - 1.0) * scale
    }
}

/// Class frequencies (Wilson, Candela & Watson 1994, as used by SFinGe).
const CLASS_CDF: [(FingerClass, f64); 5] = [
    (FingerClass::Arch, 0.037),
    (FingerClass::TentedArch, 0.037 + 0.029),
    (FingerClass::LeftLoop, 0.037 + 0.029 + 0.338),
    (FingerClass::RightLoop, 0.037 + 0.029 + 0.338 + 0.317),
    (FingerClass::Whorl, 1.0),
];

/// Draw the class, the singular points and the area for a canvas of `width × height`.
pub(crate) fn layout(rng: &mut impl RngCore, width: u32, height: u32) -> Layout {
    let u = uniform(rng, 0.0, 1.0);
    let class = CLASS_CDF.iter().find(|(_, c)| u < *c).map_or(FingerClass::Whorl, |(k, _)| *k);
    let (w, h) = (f64::from(width), f64::from(height));
    let s = (w / 400.0).min(h / 480.0);
    let area = Area {
        cx: (w / 2.0 + normal(rng, 0.0, 4.0)) as f32,
        cy: (h / 2.0 + normal(rng, 0.0, 4.0)) as f32,
        left: (s * uniform(rng, 140.0, 160.0)) as f32,
        right: (s * uniform(rng, 140.0, 160.0)) as f32,
        top: (s * uniform(rng, 165.0, 190.0)) as f32,
        bottom: (s * uniform(rng, 175.0, 200.0)) as f32,
    };
    let (cx, cy) = (f64::from(area.cx), f64::from(area.cy));
    let p = |x: f64, y: f64| (x as f32, y as f32);
    let mut cores = Vec::new();
    let mut deltas = Vec::new();
    match class {
        FingerClass::Arch => {}
        FingerClass::TentedArch => {
            let (x, y) = (cx + normal(rng, 0.0, 15.0), cy - 20.0 + normal(rng, 0.0, 20.0));
            cores.push(p(x, y));
            deltas.push(p(x + normal(rng, 0.0, 6.0), y + s * uniform(rng, 60.0, 120.0)));
        }
        FingerClass::LeftLoop | FingerClass::RightLoop => {
            let side = if class == FingerClass::LeftLoop { 1.0 } else { -1.0 };
            let (x, y) =
                (cx - side * 10.0 + normal(rng, 0.0, 15.0), cy - 25.0 + normal(rng, 0.0, 22.0));
            cores.push(p(x, y));
            let dx = s * uniform(rng, 65.0, 135.0);
            let dy = s * uniform(rng, 85.0, 150.0);
            deltas.push(p(x + side * dx, y + dy));
        }
        FingerClass::Whorl => {
            let (x, y) = (cx + normal(rng, 0.0, 15.0), cy - 15.0 + normal(rng, 0.0, 20.0));
            let sep = s * uniform(rng, 6.0, 26.0);
            let a = uniform(rng, 0.0, PI);
            let (sa, ca) = (libm::sin(a), libm::cos(a));
            cores.push(p(x - sep * ca, y - sep * sa));
            cores.push(p(x + sep * ca, y + sep * sa));
            let dy = uniform(rng, 80.0, 140.0);
            let lift = normal(rng, 0.0, 15.0);
            deltas.push(p(x - s * uniform(rng, 95.0, 150.0), y + s * (dy + lift)));
            deltas.push(p(x + s * uniform(rng, 95.0, 150.0), y + s * (dy - lift)));
        }
    }
    Layout { class, cores, deltas, area }
}

/// Piecewise-linear angle correction `g(α) = α + ε(α)` with `ε` periodic (8 sectors, as in
/// Vizcaya & Gerhardt 1996); `ε = 0` is the plain zero-pole model.
#[derive(Clone, Copy, Debug)]
struct AngleWarp([f64; 9]);

impl AngleWarp {
    fn random(rng: &mut impl RngCore, sd: f64) -> Self {
        let mut e = [0.0; 9];
        for v in e.iter_mut().take(8) {
            *v = normal(rng, 0.0, sd).clamp(-2.0 * sd, 2.0 * sd);
        }
        e[8] = e[0];
        Self(e)
    }

    fn apply(&self, a: f64) -> f64 {
        let t = (a + PI) / (2.0 * PI) * 8.0;
        let i = (t.floor() as usize).min(7);
        let f = t - i as f64;
        a + self.0[i] * (1.0 - f) + self.0[i + 1] * f
    }
}

/// Parameters of the orientation model; [`OrientationModel::theta`] evaluates it anywhere.
#[derive(Clone, Debug)]
pub(crate) struct OrientationModel {
    cores: Vec<(f64, f64, AngleWarp)>,
    deltas: Vec<(f64, f64, AngleWarp)>,
    /// Arch parameters: amplitude, horizontal width, centre x, centre y, vertical extent.
    arch: Option<(f64, f64, f64, f64, f64)>,
    /// Smooth perturbation.
    waves: Waves,
}

impl OrientationModel {
    pub(crate) fn new(rng: &mut impl RngCore, layout: &Layout) -> Self {
        let warp_sd = 0.18;
        let cores: Vec<_> = layout
            .cores
            .iter()
            .map(|&(x, y)| (f64::from(x), f64::from(y), AngleWarp::random(rng, warp_sd)))
            .collect();
        let deltas: Vec<_> = layout
            .deltas
            .iter()
            .map(|&(x, y)| (f64::from(x), f64::from(y), AngleWarp::random(rng, warp_sd)))
            .collect();
        let arch = (layout.class == FingerClass::Arch).then(|| {
            (
                uniform(rng, 0.7, 1.6),
                uniform(rng, 55.0, 95.0),
                f64::from(layout.area.cx) + normal(rng, 0.0, 20.0),
                f64::from(layout.area.cy) + uniform(rng, -40.0, 40.0),
                uniform(rng, 90.0, 150.0),
            )
        });
        let waves = Waves::random(rng, 5, (140.0, 420.0), (0.03, 0.09));
        Self { cores, deltas, arch, waves }
    }

    /// Ridge orientation (direction along the ridges, radians, image coordinates with y down) at
    /// `(x, y)`, not reduced modulo π.
    pub(crate) fn theta(&self, x: f64, y: f64) -> f64 {
        let mut t = 0.0;
        if let Some((amp, width, ax, ay, extent)) = self.arch {
            // Ridges y = y0 - h(y0)·bump(x): slope of a Gaussian bump whose height fades below
            // and above the arch centre.
            let u = (x - ax) / width;
            let fade = libm::exp(-((y - ay) / extent).powi(2));
            t = libm::atan(amp * fade * u * libm::exp(-0.5 * u * u));
        } else {
            for &(dx, dy, w) in &self.deltas {
                t -= 0.5 * w.apply(libm::atan2(y - dy, x - dx));
            }
            for &(cx, cy, w) in &self.cores {
                t += 0.5 * w.apply(libm::atan2(y - cy, x - cx));
            }
        }
        self.waves.add_to(t, x, y)
    }
}

/// Parameters of the ridge-period map.
#[derive(Clone, Debug)]
pub(crate) struct PeriodModel {
    base: f64,
    waves: Waves,
    /// Ridges are a little wider apart around the cores.
    centre: Option<(f64, f64, f64)>,
}

impl PeriodModel {
    pub(crate) fn new(rng: &mut impl RngCore, layout: &Layout) -> Self {
        let base = uniform(rng, 8.3, 10.2);
        let waves = Waves::random(rng, 4, (120.0, 400.0), (0.15, 0.4));
        let centre = (!layout.cores.is_empty()).then(|| {
            let n = layout.cores.len() as f64;
            let mx = layout.cores.iter().map(|c| f64::from(c.0)).sum::<f64>() / n;
            let my = layout.cores.iter().map(|c| f64::from(c.1)).sum::<f64>() / n;
            (mx, my, uniform(rng, 0.3, 0.9))
        });
        Self { base, waves, centre }
    }

    /// Ridge period in pixels at `(x, y)`, within `[7, 12]`.
    pub(crate) fn period(&self, x: f64, y: f64) -> f64 {
        let mut p = self.waves.add_to(self.base, x, y);
        if let Some((cx, cy, a)) = self.centre {
            let r2 = ((x - cx).powi(2) + (y - cy).powi(2)) / (70.0 * 70.0);
            p += a * libm::exp(-r2);
        }
        p.clamp(7.0, 12.0)
    }
}

/// The orientation and period fields tabulated on a grid of step [`GRID`].
#[derive(Clone, Debug)]
pub(crate) struct FieldGrid {
    pub cols: usize,
    pub rows: usize,
    /// `(cos 2θ, sin 2θ)` per node.
    pub dir: Vec<(f32, f32)>,
    pub period: Vec<f32>,
}

impl FieldGrid {
    pub(crate) fn new(width: u32, height: u32, o: &OrientationModel, p: &PeriodModel) -> Self {
        let cols = width as usize / GRID + 2;
        let rows = height as usize / GRID + 2;
        let mut dir = Vec::with_capacity(cols * rows);
        let mut period = Vec::with_capacity(cols * rows);
        for r in 0..rows {
            for c in 0..cols {
                let (x, y) = ((c * GRID) as f64, (r * GRID) as f64);
                let t = 2.0 * o.theta(x, y);
                dir.push((libm::cos(t) as f32, libm::sin(t) as f32));
                period.push(p.period(x, y) as f32);
            }
        }
        Self { cols, rows, dir, period }
    }

    /// Bilinear interpolation: `(cos 2θ, sin 2θ, period)` at `(x, y)` (clamped to the grid).
    pub(crate) fn sample(&self, x: f32, y: f32) -> (f32, f32, f32) {
        let gx = (x / GRID as f32).clamp(0.0, (self.cols - 1) as f32 - 1e-3);
        let gy = (y / GRID as f32).clamp(0.0, (self.rows - 1) as f32 - 1e-3);
        let (c0, r0) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - c0 as f32, gy - r0 as f32);
        let i = r0 * self.cols + c0;
        let w = [(1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy];
        let idx = [i, i + 1, i + self.cols, i + self.cols + 1];
        let (mut a, mut b, mut p) = (0.0, 0.0, 0.0);
        for (wk, ik) in w.into_iter().zip(idx) {
            a += wk * self.dir[ik].0;
            b += wk * self.dir[ik].1;
            p += wk * self.period[ik];
        }
        (a, b, p)
    }
}

/// Three independent smooth random fields: values uniform in `[-1, 1]` on a coarse lattice,
/// interpolated bilinearly with smoothstep weights.
#[derive(Clone, Debug)]
pub(crate) struct SmoothNoise {
    inv_step: f32,
    cols: usize,
    rows: usize,
    v: Vec<[f32; 3]>,
}

impl SmoothNoise {
    /// A lattice of `step` pixels covering `width × height`.
    pub(crate) fn new(rng: &mut impl Rng, width: u32, height: u32, step: f32) -> Self {
        let cols = (width as f32 / step) as usize + 3;
        let rows = (height as f32 / step) as usize + 3;
        let mut draw = || uniform(rng, -1.0, 1.0) as f32;
        let v = (0..cols * rows).map(|_| [draw(), draw(), draw()]).collect();
        Self { inv_step: 1.0 / step, cols, rows, v }
    }

    /// The three fields at `(x, y)` (clamped to the lattice).
    #[inline]
    pub(crate) fn at(&self, x: f32, y: f32) -> [f32; 3] {
        let gx = (x * self.inv_step).clamp(0.0, (self.cols - 1) as f32 - 1e-3);
        let gy = (y * self.inv_step).clamp(0.0, (self.rows - 1) as f32 - 1e-3);
        let (c0, r0) = (gx as usize, gy as usize);
        let (mut fx, mut fy) = (gx - c0 as f32, gy - r0 as f32);
        fx = fx * fx * (3.0 - 2.0 * fx);
        fy = fy * fy * (3.0 - 2.0 * fy);
        let i = r0 * self.cols + c0;
        let (a, b, c, d) =
            (self.v[i], self.v[i + 1], self.v[i + self.cols], self.v[i + self.cols + 1]);
        let mut out = [0.0; 3];
        for k in 0..3 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bot = c[k] + (d[k] - c[k]) * fx;
            out[k] = top + (bot - top) * fy;
        }
        out
    }
}
