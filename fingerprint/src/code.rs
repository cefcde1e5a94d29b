//! Fixed-length finger codes for 1:N pre-selection: a minutiae template becomes one short,
//! L2-normalised `f32` vector whose inner product with another finger's code ranks candidates,
//! so fingers can be searched by the same vector indexes as faces (FAISS, fp16 columns).
//!
//! Representation (after the minutia-pair indexing of Germain et al. 1997 and the pair
//! histograms of spectral/"minutiae pair" fixed-length schemes):
//! 1. **Pair histogram.** Every ordered pair `(i, j)` of minutiae at distance `d` within
//!    `[d_min, d_max]` adds one vote at `(d, α, β)`, with `α` the direction from `i` to `j`
//!    measured from `i`'s direction and `β` the direction of `j` relative to `i`'s: invariant
//!    to translation and rotation. Votes are spread linearly over the two nearest bins of each
//!    axis (circularly for the angles), so jitter and elastic distortion move mass between
//!    neighbouring bins instead of flipping it to a far one.
//! 2. **Power normalisation** (square root of the counts): a few dense regions of a print do not
//!    dominate.
//! 3. **Standardisation** by the population mean and standard deviation of each bin, learnt once
//!    ([`CodeModel::train`]): the histogram of every finger shares a common shape (ridge flow
//!    makes near-parallel neighbours common), which would otherwise make every pair of fingers
//!    look alike.
//! 4. **Projection** onto `dim` dimensions by a fixed, seeded Gaussian random matrix (inner
//!    products are preserved up to a noise of about `1/√dim`), then L2 normalisation.
//!
//! Codes are biometric data (a finger's pair statistics): they never appear in logs or `Debug`.

use std::fmt;

use biomatch_core::finger::{FingerTemplate, RESOLUTION_500DPI_PPCM};
use serde::{Deserialize, Serialize};

/// Binning of the minutia-pair histogram.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairBins {
    /// Pairs closer than this are ignored, pixels at 500 dpi.
    pub d_min: f32,
    /// Pairs farther than this are ignored (distortion grows with distance).
    pub d_max: f32,
    pub d_bins: usize,
    /// Bins of `α` and `β` over the full circle.
    pub a_bins: usize,
    pub b_bins: usize,
}

impl Default for PairBins {
    fn default() -> Self {
        Self { d_min: 12.0, d_max: 180.0, d_bins: 12, a_bins: 16, b_bins: 16 }
    }
}

impl PairBins {
    /// Length of the histogram.
    pub fn len(&self) -> usize {
        self.d_bins * self.a_bins * self.b_bins
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.d_min >= 0.0 && self.d_max > self.d_min && self.d_max.is_finite()) {
            return Err(format!("pair distances {}..{} are not a range", self.d_min, self.d_max));
        }
        if [self.d_bins, self.a_bins, self.b_bins].iter().any(|&b| !(2..=256).contains(&b)) {
            return Err("every pair axis needs 2..=256 bins".into());
        }
        Ok(())
    }
}

/// The minutia-pair histogram of a template (raw counts, soft-binned), into `out` (length
/// [`PairBins::len`], overwritten).
pub fn pair_histogram(t: &FingerTemplate, bins: &PairBins, out: &mut [f32]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    let scale = match t.resolution_ppcm {
        0 => 1.0,
        r => f32::from(RESOLUTION_500DPI_PPCM) / f32::from(r),
    };
    // Right-handed frame at 500 dpi (X = x, Y = −y): the ISO angle is counter-clockwise.
    let pts: Vec<(f32, f32, f32)> = t
        .minutiae
        .iter()
        .map(|m| (f32::from(m.x) * scale, -f32::from(m.y) * scale, m.angle_rad()))
        .collect();
    let tau = std::f32::consts::TAU;
    let (nd, na, nb) = (bins.d_bins, bins.a_bins, bins.b_bins);
    let d_step = (bins.d_max - bins.d_min) / nd as f32;
    let (a_step, b_step) = (tau / na as f32, tau / nb as f32);
    let (lo_sq, hi_sq) = (bins.d_min * bins.d_min, bins.d_max * bins.d_max);
    for (i, &(xi, yi, ti)) in pts.iter().enumerate() {
        for (j, &(xj, yj, tj)) in pts.iter().enumerate() {
            let (dx, dy) = (xj - xi, yj - yi);
            let dsq = dx * dx + dy * dy;
            if i == j || dsq < lo_sq || dsq > hi_sq {
                continue;
            }
            let d = dsq.sqrt();
            let alpha = (dy.atan2(dx) - ti).rem_euclid(tau);
            let beta = (tj - ti).rem_euclid(tau);
            // Linear weights over the two nearest bin centres of each axis.
            let fd = ((d - bins.d_min) / d_step - 0.5).clamp(0.0, (nd - 1) as f32);
            let d0 = (fd.floor() as usize).min(nd - 1);
            let d1 = (d0 + 1).min(nd - 1);
            let wd = fd - d0 as f32;
            let fa = alpha / a_step - 0.5;
            let a0f = fa.floor();
            let wa = fa - a0f;
            let a0 = (a0f as isize).rem_euclid(na as isize) as usize;
            let a1 = (a0 + 1) % na;
            let fb = beta / b_step - 0.5;
            let b0f = fb.floor();
            let wb = fb - b0f;
            let b0 = (b0f as isize).rem_euclid(nb as isize) as usize;
            let b1 = (b0 + 1) % nb;
            for (dbin, w1) in [(d0, 1.0 - wd), (d1, wd)] {
                for (abin, w2) in [(a0, 1.0 - wa), (a1, wa)] {
                    let base = (dbin * na + abin) * nb;
                    let w = w1 * w2;
                    out[base + b0] += w * (1.0 - wb);
                    out[base + b1] += w * wb;
                }
            }
        }
    }
}

/// The learnt part of a code: bins, population statistics and projection seed. Serialisable
/// (the service ships its model compiled in).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeModelSpec {
    /// Code model name and version, e.g. `"mpc"`, `"1"`; stored codes are only comparable within
    /// one.
    pub name: String,
    pub version: String,
    pub bins: PairBins,
    /// Output dimension (0: no projection, the standardised histogram itself).
    pub dim: usize,
    pub seed: u64,
    /// Per-bin mean and standard deviation of the power-normalised histogram.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl fmt::Debug for CodeModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeModelSpec")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bins", &self.bins)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

/// A ready code model: its spec and the projection matrix built from the seed.
#[derive(Clone)]
pub struct CodeModel {
    spec: CodeModelSpec,
    /// `dim × len` row-major; empty when `dim` is 0.
    projection: Vec<f32>,
}

impl fmt::Debug for CodeModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

/// Seeded standard normal numbers (SplitMix64 + Box–Muller): the projection must be identical
/// on every machine and in every version built from the same spec.
fn gaussians(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The shipped code model, `mpc@1` (trained with `benches/examples/finger_code_sweep.rs
/// --write-model` on 4 000 synthetic fingers disjoint from any evaluation).
pub fn shipped() -> CodeModel {
    static SHIPPED: std::sync::OnceLock<CodeModel> = std::sync::OnceLock::new();
    SHIPPED
        .get_or_init(|| {
            let spec: CodeModelSpec = serde_json::from_str(include_str!("../models/mpc@1.json"))
                .expect("the shipped model parses");
            CodeModel::new(spec).expect("the shipped model is valid")
        })
        .clone()
}

impl CodeModel {
    /// The model of a spec (checks its lengths).
    pub fn new(spec: CodeModelSpec) -> Result<CodeModel, String> {
        spec.bins.validate()?;
        let len = spec.bins.len();
        if spec.mean.len() != len || spec.std.len() != len {
            return Err(format!(
                "code model {}@{}: {} means and {} deviations for {len} bins",
                spec.name,
                spec.version,
                spec.mean.len(),
                spec.std.len()
            ));
        }
        if spec.dim > 4096 {
            return Err(format!("code dimension {} is above 4096", spec.dim));
        }
        let projection =
            if spec.dim == 0 { Vec::new() } else { gaussians(spec.seed, spec.dim * len) };
        Ok(CodeModel { spec, projection })
    }

    /// Learn the per-bin statistics from sample templates (fingers unrelated to any gallery).
    pub fn train(
        name: &str,
        version: &str,
        bins: PairBins,
        dim: usize,
        seed: u64,
        samples: &[FingerTemplate],
    ) -> Result<CodeModel, String> {
        bins.validate()?;
        if samples.is_empty() {
            return Err("no training templates".into());
        }
        let len = bins.len();
        let (mut sum, mut sq) = (vec![0f64; len], vec![0f64; len]);
        let mut h = vec![0f32; len];
        for t in samples {
            pair_histogram(t, &bins, &mut h);
            hellinger(&mut h);
            for ((s, q), &x) in sum.iter_mut().zip(sq.iter_mut()).zip(&h) {
                let x = f64::from(x);
                *s += x;
                *q += x * x;
            }
        }
        let n = samples.len() as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std: Vec<f32> = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| ((q / n - (s / n) * (s / n)).max(0.0).sqrt() as f32).max(1e-3))
            .collect();
        CodeModel::new(CodeModelSpec {
            name: name.into(),
            version: version.into(),
            bins,
            dim,
            seed,
            mean,
            std,
        })
    }

    pub fn spec(&self) -> &CodeModelSpec {
        &self.spec
    }

    /// Length of the codes.
    pub fn dim(&self) -> usize {
        if self.spec.dim == 0 {
            self.spec.bins.len()
        } else {
            self.spec.dim
        }
    }

    /// The code of a template: L2-normalised, length [`CodeModel::dim`]. A template with no
    /// minutia pair in range gets the zero vector (it matches nothing).
    pub fn encode(&self, t: &FingerTemplate) -> Vec<f32> {
        let len = self.spec.bins.len();
        let mut h = vec![0f32; len];
        pair_histogram(t, &self.spec.bins, &mut h);
        if h.iter().all(|&x| x == 0.0) {
            return vec![0.0; self.dim()];
        }
        hellinger(&mut h);
        for ((x, m), s) in h.iter_mut().zip(&self.spec.mean).zip(&self.spec.std) {
            *x = (*x - m) / s;
        }
        let mut code = if self.spec.dim == 0 {
            h
        } else {
            self.projection.chunks_exact(len).map(|row| dot(row, &h)).collect()
        };
        let norm = code.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            code.iter_mut().for_each(|x| *x /= norm);
        }
        code
    }
}

/// Counts → square roots of the shares (the Hellinger embedding of the distribution): the
/// number of pairs (a larger or smaller capture) no longer scales every bin together.
fn hellinger(h: &mut [f32]) {
    let total: f32 = h.iter().sum();
    if total > 0.0 {
        h.iter_mut().for_each(|x| *x = (*x / total).sqrt());
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: the compiler vectorises this.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}
