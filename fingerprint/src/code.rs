//! Fixed-length finger codes for 1:N pre-selection: a minutiae template becomes one short,
//! L2-normalised `f32` vector whose inner product with another finger's code ranks candidates,
//! so fingers can be searched by the same vector indexes as faces (FAISS, fp16 columns).
//!
//! # Representation
//!
//! After the minutia-pair indexing of Germain et al. 1997 and the pair histograms of
//! spectral/"minutiae pair" fixed-length schemes, with a learnt linear projection:
//! 1. **Pair histogram** ([`pair_histogram`]). Every ordered pair `(i, j)` of minutiae at
//!    distance `d` within `[d_min, d_max]` adds a vote at `(d, α, β)`, with `α` the direction
//!    from `i` to `j` measured from `i`'s direction and `β` the direction of `j` relative to
//!    `i`'s: invariant to translation and rotation. Votes are spread linearly over the two
//!    nearest bins of each axis (circularly for the angles), so jitter and elastic distortion move
//!    mass between neighbouring bins instead of flipping it to a far one. A vote weighs
//!    `(q_i q_j)^quality_weight` (minutia qualities in `(0, 1]`): unreliable minutiae, spurious
//!    ones among them, count less.
//! 2. **Power normalisation**: the shares of the histogram raised to `power` (0.5, the Hellinger
//!    embedding): the capture size no longer scales every bin, and a few dense regions of a print
//!    do not dominate.
//! 3. **Centring** by the training mean (optionally standardising each bin).
//! 4. **Learnt projection** to `dim` dimensions. The histograms of all fingers share strong common
//!    directions (nuisance variation: capture area, density, distortion), which made the first
//!    version's random projection rank poorly (impostor cosine sd 0.10–0.12 where unrelated
//!    random vectors give 0.02). The shipped model ([`Projection::Lda`], [`LdaBasis`]) first
//!    PCA-whitens to the 512 leading principal components of training fingers (component `m`
//!    scaled by `(λ_m + 0.1 λ̄)^(−1/2)`, `λ̄` the mean eigenvalue), then keeps the `dim` directions
//!    of that space along which two impressions of one finger vary least (LDA on mated training
//!    pairs: the within-finger covariance, eigen-decomposed; each direction scaled by
//!    `w^(−1/2)`, `w` its within-finger share of variance). [`Projection::PcaWhiten`] (no mated
//!    pairs needed) and the seeded Gaussian [`Projection::Random`] remain available.
//! 5. **L2 normalisation.**
//!
//! Training needs no linear-algebra crate: the covariance is accumulated by a cache-blocked
//! `f32` Gram kernel into `f64`; its leading eigenvectors come from seeded subspace iteration
//! (block of `k + k/4`, 14 multiplications, Gram–Schmidt), Rayleigh–Ritz and cyclic Jacobi on the
//! small projected matrix (relative residuals ≈ 2·10⁻⁵ for 512 components of 2 560 bins).
//!
//! # Measurements
//!
//! `benches/examples/finger_code_sweep.rs` on the minutiae-level synthetic generator
//! (`datasets::finger::fast`, seed 1): training fingers disjoint from gallery and probes; `N`
//! gallery fingers per position (impression 0), probes impression 1; a finger hits when its mate
//! is among the best `p · N` of its position, a 2-finger subject when its mate is by the sum of
//! the two fingers' scores. One core (`RAYON_NUM_THREADS=1`, shared machine: times are ±30 %).
//! Unless noted `N` = 10 000, 10 000 probe fingers (5 000 subjects: one subject is 0.02 %),
//! 20 000 training fingers (and 20 000 mated pairs for LDA), 256 dimensions; bins `d` =
//! `d_min:d_max:d_bins`, 16 × 16 angle bins, Hellinger.
//!
//! | configuration | finger hit % at p = 0.1 / 0.25 / 0.5 / 1 % | subject % at 0.1 / 0.25 / 0.5 / 1 % | impostor sd | train s |
//! |---|---|---|---|---|
//! | first version, no projection (3 072-d), `d` 12:180:12, standardised | 87.3 / 89.7 / 91.5 / 93.0 | 98.42 / 99.10 / 99.34 / 99.46 | 0.104 | 3 |
//! | first version, random projection (old `mpc@1`) | 80.5 / 84.0 / 86.8 / 89.1 | 97.00 / 97.78 / 98.40 / 98.70 | 0.117 | 3 |
//! | PCA-whitening, same histogram, eps 0.1 | 92.0 / 93.6 / 94.6 / 95.8 | 99.42 / 99.68 / 99.76 / 99.80 | 0.063 | 20 |
//! | PCA + LDA (m = 384), same histogram | 93.3 / 95.1 / 96.1 / 97.1 | 99.78 / 99.84 / 99.90 / 99.90 | 0.071 | 33 |
//! | PCA + LDA (m = 512), `d` 12:150:10, quality weight 0.5 | 94.8 / 96.2 / 97.0 / 97.6 | 99.80 / 99.84 / 99.88 / 99.90 | 0.068 | 37 |
//! | — the same, 50 000 training fingers and pairs (**shipped**) | 95.3 / 96.6 / 97.3 / 98.0 | 99.84 / 99.88 / 99.88 / 99.88 | 0.068 | 60–85 |
//! | — shipped, `N` = 50 000 | 95.4 / 96.6 / 97.2 / 97.9 | 99.84 / 99.88 / 99.88 / 99.88 | 0.068 | |
//! | — shipped, `N` = 50 000, gallery PQ 128 × 8 bit (128 bytes) | 95.4 / 96.6 / 97.3 / 97.9 | 99.86 / 99.86 / 99.88 / 99.88 | 0.068 | |
//! | — 128 dimensions (20 000 training) | 90.7 / 93.1 / 94.7 / 96.0 | 99.44 / 99.66 / 99.80 / 99.88 | 0.097 | |
//! | — 384 dimensions (over the 256 budget) | 96.3 / 97.1 / 97.7 / 98.3 | 99.86 / 99.88 / 99.92 / 99.94 | 0.056 | |
//!
//! Smaller sweeps (4 000 probes, 2 000 subjects; PCA-whitening unless noted):
//! * **PCA-whitening regularisation** (eps × mean eigenvalue; the 256th eigenvalue is about 2 λ̄,
//!   so eps ≤ 1 hardly matters; 4 000–20 000 training fingers): finger hit at 0.5 % 94.7 (eps
//!   0.01, 0.1), 94.6 (1, 3), 94.0
//!   (10), 92.5 (30); partial whitening `alpha` 0.35: 94.4; plain PCA (`alpha` 0): 84.1 (subject
//!   97.00). Dropping the top 2 / 8 components: 94.8 / 94.5: whitening already tames them.
//! * **Training size** for PCA-whitening: 4 000 → 20 000 fingers changes nothing measurable
//!   (94.7 both); for LDA 20 000 → 50 000 pairs: 97.0 → 97.3.
//! * **Histogram** (8 000 training fingers, 0.5 % finger / subject): 16 × 16 × 12 bins to 180 px
//!   95.5 / 99.80 with quality weight 0.5 (94.8 / 99.75 without, 95.0 with weight 1); `d` 12:150:10
//!   95.3 / 99.70, 12:220:14 93.6 / 99.65; 12 × 12 angle bins 95.1; power 0.3 / 0.7: 94.4 / 94.8;
//!   standardised bins 95.3; **minutia-type channels** (same / different type, 12 × 12 angles)
//!   91.4 / 99.20: the types flip too often (10 %) to be worth halving the counts. With LDA
//!   (`m` 384, 10 000 probes) none of `d_min` 0 / 20, 8 `d` bins, 20 × 20 angle bins, quality
//!   weight 0.25 / 0.75, `beta` 0.25 / 0.75 or standardising moved the figures by more than the
//!   noise (finger 96.5–97.0, subject 99.86–99.90 at 0.5 %). Principal components before the
//!   LDA, `m` 384 / 512 / 768: finger 97.0 / 97.0 / 96.9 (20 000 pairs); at `m` 768 a stronger
//!   whitening regularisation (eps 1) costs 1.7 points.
//! * **Scaling with `N`**: at a fixed penetration *fraction* the hit rates of 10 000 and 50 000
//!   fingers per position agree within 0.1 %.
//! * **Storage**: fp16, 8-bit and 4-bit scalar quantisation per dimension and PQ 128 × 8 bit of
//!   the gallery codes (asymmetric: float probes) change no figure by more than 0.2 % (4-bit) and
//!   0.1 % (the others).
//! * Encoding the shipped configuration took 150–230 µs per finger on one core, most of it the
//!   histogram (the first version without projection, 3 072 bins: 152 µs).
//!
//! **Where it stands.** The 2-finger target (99.9 % at 0.5 % penetration) is met within the
//! noise but not clearly: 6 of 5 000 subjects miss at 0.5 %, at `N` = 10 000 and 50 000 alike.
//! Nearly every miss has an impression with few minutiae (finger misses at 0.5 % by the smaller
//! minutia count of the pair: 10–19: 25 %, 20–29: 8 %, 30–39: 1.1 %, ≥ 40: < 0.2 %): a global
//! pair statistic of 10–20 minutiae is too noisy, and weighting each finger's score by its
//! minutia count in the fusion did not help measurably. More dimensions do help (384: 97.7 % per finger).
//! A second feature family (triplets, local cylinder words) was not tried. Everything here is
//! trained and measured on one synthetic generator: the LDA learns *its* within-finger variation,
//! so real captures need a model retrained on real mated pairs before these figures mean
//! anything for them.
//!
//! # The shipped model
//!
//! `models/mpc@1.bin` ([`shipped`]), written by `finger_code_sweep --train 50000 --write-model`
//! with [`CodeParams::default`]: the compact [`CodeModelSpec::to_bytes`] form (JSON header, f32
//! statistics, f16 projection, CRC-32), about 1.3 MB, checked when loaded.
//!
//! Codes are biometric data (a finger's pair statistics): they never appear in logs or `Debug`.

use std::fmt;

use biomatch_core::finger::{FingerTemplate, MinutiaKind, RESOLUTION_500DPI_PPCM};
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
    /// Minutia-type channels: 1 (types ignored) or 2 (pairs of the same type and pairs of
    /// different types in separate histograms).
    #[serde(default = "one")]
    pub kind_channels: usize,
    /// Each pair's vote is weighted by `(q_i · q_j)^quality_weight` with the minutiae qualities
    /// in `(0, 1]` (0: every pair counts 1).
    #[serde(default)]
    pub quality_weight: f32,
}

fn one() -> usize {
    1
}

impl Default for PairBins {
    fn default() -> Self {
        Self {
            d_min: 12.0,
            d_max: 150.0,
            d_bins: 10,
            a_bins: 16,
            b_bins: 16,
            kind_channels: 1,
            quality_weight: 0.5,
        }
    }
}

impl PairBins {
    /// Length of the histogram.
    pub fn len(&self) -> usize {
        self.kind_channels * self.d_bins * self.a_bins * self.b_bins
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
        if !(1..=2).contains(&self.kind_channels) {
            return Err(format!("{} minutia-type channels (1 or 2)", self.kind_channels));
        }
        if !(0.0..=4.0).contains(&self.quality_weight) {
            return Err(format!(
                "quality weight exponent {} is outside 0..=4",
                self.quality_weight
            ));
        }
        if self.len() > 16_384 {
            return Err(format!("{} histogram bins (at most 16384)", self.len()));
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
    // (x, y, angle, bifurcation, quality weight)
    let qw = bins.quality_weight;
    let pts: Vec<(f32, f32, f32, bool, f32)> = t
        .minutiae
        .iter()
        .map(|m| {
            let w = if qw == 0.0 { 1.0 } else { (f32::from(m.quality.max(1)) / 100.0).powf(qw) };
            (
                f32::from(m.x) * scale,
                -f32::from(m.y) * scale,
                m.angle_rad(),
                m.kind == MinutiaKind::Bifurcation,
                w,
            )
        })
        .collect();
    let tau = std::f32::consts::TAU;
    let (nd, na, nb) = (bins.d_bins, bins.a_bins, bins.b_bins);
    let channel_len = nd * na * nb;
    let d_step = (bins.d_max - bins.d_min) / nd as f32;
    let (a_step, b_step) = (tau / na as f32, tau / nb as f32);
    let (lo_sq, hi_sq) = (bins.d_min * bins.d_min, bins.d_max * bins.d_max);
    for (i, &(xi, yi, ti, ki, wi)) in pts.iter().enumerate() {
        for (j, &(xj, yj, tj, kj, wj)) in pts.iter().enumerate() {
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
            let channel = if bins.kind_channels == 2 && ki != kj { channel_len } else { 0 };
            let w0 = wi * wj;
            for (dbin, w1) in [(d0, 1.0 - wd), (d1, wd)] {
                for (abin, w2) in [(a0, 1.0 - wa), (a1, wa)] {
                    let base = channel + (dbin * na + abin) * nb;
                    let w = w0 * w1 * w2;
                    out[base + b0] += w * (1.0 - wb);
                    out[base + b1] += w * wb;
                }
            }
        }
    }
}

/// The power-normalised histogram of a template (the input of every projection): the shares of
/// the histogram raised to `power` (0.5: the Hellinger embedding). `false` when the template has
/// no minutia pair in range (`out` is then all zero).
fn features(t: &FingerTemplate, bins: &PairBins, power: f32, out: &mut [f32]) -> bool {
    pair_histogram(t, bins, out);
    let total: f32 = out.iter().sum();
    if total <= 0.0 {
        return false;
    }
    if power == 0.5 {
        out.iter_mut().for_each(|x| *x = (*x / total).sqrt());
    } else {
        out.iter_mut().for_each(|x| *x = (*x / total).powf(power));
    }
    true
}

/// How the standardised histogram becomes a code.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    /// No projection: the standardised histogram itself (`dim` is 0).
    Identity,
    /// A fixed Gaussian random matrix from the seed (the first `mpc` version).
    Random,
    /// A learnt matrix (PCA-whitening): `components` and `scale` of the spec.
    Learnt,
}

/// How [`CodeModel::train_with`] learns a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodeParams {
    pub bins: PairBins,
    /// Exponent of the histogram shares (0.5: Hellinger).
    pub power: f32,
    /// Divide each bin by its population standard deviation before projecting (PCA on the
    /// correlation rather than the covariance matrix).
    pub standardise: bool,
    /// Code length (0: no projection).
    pub dim: usize,
    /// Seed of the random projection, or of the eigensolver's start.
    pub seed: u64,
    pub projection: Projection,
}

/// The projection [`CodeModel::train_with`] learns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Projection {
    /// Seeded Gaussian random projection.
    Random,
    /// PCA-whitening: principal components `drop .. drop + dim` of the training histograms,
    /// component `m` scaled by `(λ_m + eps · λ̄)^(−alpha)` (`λ̄` the mean eigenvalue over all
    /// bins; `alpha` 0.5 whitens fully, 0 keeps plain PCA).
    PcaWhiten { drop: usize, eps: f32, alpha: f32 },
    /// PCA-whitening to `pca_dims` components (regularised by `eps` as above), then the `dim`
    /// directions along which mated training impressions vary least (LDA), each scaled by
    /// `w^(−beta)` with `w` its within-finger variance share ([`LdaBasis`]). Needs mated pairs.
    Lda { pca_dims: usize, eps: f32, beta: f32 },
}

impl Default for CodeParams {
    /// The shipped `mpc@1` recipe.
    fn default() -> Self {
        CodeParams {
            bins: PairBins::default(),
            power: 0.5,
            standardise: false,
            dim: 256,
            seed: 7,
            projection: Projection::Lda { pca_dims: 512, eps: 0.1, beta: 0.5 },
        }
    }
}

/// The learnt part of a code: bins, population statistics and projection. Stored compactly by
/// [`CodeModelSpec::to_bytes`] (the service ships its model compiled in).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeModelSpec {
    /// Code model name and version, e.g. `"mpc"`, `"1"`; stored codes are only comparable within
    /// one.
    pub name: String,
    pub version: String,
    pub bins: PairBins,
    /// Exponent of the histogram shares (0.5: Hellinger).
    #[serde(default = "hellinger_power")]
    pub power: f32,
    /// Output dimension (0: no projection, the standardised histogram itself).
    pub dim: usize,
    pub seed: u64,
    #[serde(default = "random_kind")]
    pub projection: ProjectionKind,
    /// Per-bin centre and scale of the power-normalised histogram (`(x − mean) / std`).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Learnt projection, `dim × len` row-major, every value exactly representable in f16 (the
    /// stored precision); empty unless the projection is [`ProjectionKind::Learnt`].
    #[serde(default)]
    pub components: Vec<f32>,
    /// Per-output scale after the learnt projection (the whitening), length `dim`.
    #[serde(default)]
    pub scale: Vec<f32>,
    /// How the model was trained (informational).
    #[serde(default)]
    pub training: String,
}

fn hellinger_power() -> f32 {
    0.5
}

fn random_kind() -> ProjectionKind {
    ProjectionKind::Random
}

impl fmt::Debug for CodeModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeModelSpec")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bins", &self.bins)
            .field("power", &self.power)
            .field("dim", &self.dim)
            .field("projection", &self.projection)
            .field("training", &self.training)
            .finish_non_exhaustive()
    }
}

/// Magic of the binary model file.
const MAGIC: &[u8; 8] = b"BMFCODE\0";
/// Layout version of the binary model file.
const FORMAT_VERSION: u32 = 1;

impl CodeModelSpec {
    /// The compact binary form: `MAGIC`, format version (u32 LE), header length (u32 LE), a JSON
    /// header (the spec without its arrays), then `mean` and `std` (f32 LE, one per bin),
    /// `scale` (f32 LE, `dim`) and `components` (f16 LE, `dim × bins`) when learnt, and the
    /// CRC-32 of everything before it (u32 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = CodeModelSpec {
            mean: Vec::new(),
            std: Vec::new(),
            components: Vec::new(),
            scale: Vec::new(),
            ..self.clone()
        };
        let header = serde_json::to_vec(&header).expect("a spec header serialises");
        let mut out = Vec::with_capacity(
            24 + header.len()
                + 4 * (self.mean.len() + self.std.len() + self.scale.len())
                + 2 * self.components.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for x in self.mean.iter().chain(&self.std).chain(&self.scale) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for &x in &self.components {
            out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parse [`CodeModelSpec::to_bytes`]'s form, refusing a wrong magic, format version,
    /// length or checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<CodeModelSpec, String> {
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err("not a finger code model file".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != crc {
            return Err("finger code model file: checksum mismatch (corrupted)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "finger code model file format {version} (expected {FORMAT_VERSION})"
            ));
        }
        let header_len = u32_at(12) as usize;
        let header = body.get(16..16 + header_len).ok_or("finger code model file: short header")?;
        let mut spec: CodeModelSpec =
            serde_json::from_slice(header).map_err(|e| format!("finger code model header: {e}"))?;
        spec.bins.validate()?;
        let len = spec.bins.len();
        let learnt = spec.projection == ProjectionKind::Learnt;
        let (n_scale, n_comp) = if learnt { (spec.dim, spec.dim * len) } else { (0, 0) };
        let mut rest = &body[16 + header_len..];
        if rest.len() != 4 * (2 * len + n_scale) + 2 * n_comp {
            return Err(format!(
                "finger code model file: {} bytes of arrays for {len} bins and dimension {}",
                rest.len(),
                spec.dim
            ));
        }
        let mut f32s = |n: usize| -> Vec<f32> {
            let (a, b) = rest.split_at(4 * n);
            rest = b;
            a.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
        };
        spec.mean = f32s(len);
        spec.std = f32s(len);
        spec.scale = f32s(n_scale);
        spec.components =
            rest.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        Ok(spec)
    }
}

/// A ready code model: its spec and the projection matrix (learnt or built from the seed).
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
/// --write-model`; see the module docs for the recipe and its measured hit rates).
pub fn shipped() -> std::sync::Arc<CodeModel> {
    static SHIPPED: std::sync::OnceLock<std::sync::Arc<CodeModel>> = std::sync::OnceLock::new();
    SHIPPED
        .get_or_init(|| {
            let spec = CodeModelSpec::from_bytes(include_bytes!("../models/mpc@1.bin"))
                .expect("the shipped model parses");
            std::sync::Arc::new(CodeModel::new(spec).expect("the shipped model is valid"))
        })
        .clone()
}

impl CodeModel {
    /// The model of a spec (checks its lengths).
    pub fn new(spec: CodeModelSpec) -> Result<CodeModel, String> {
        spec.bins.validate()?;
        let len = spec.bins.len();
        let what = format!("code model {}@{}", spec.name, spec.version);
        if spec.mean.len() != len || spec.std.len() != len {
            return Err(format!(
                "{what}: {} means and {} deviations for {len} bins",
                spec.mean.len(),
                spec.std.len()
            ));
        }
        if spec.std.iter().any(|&s| !(s > 0.0 && s.is_finite()))
            || spec.mean.iter().any(|m| !m.is_finite())
        {
            return Err(format!("{what}: a bin's mean or deviation is not finite and positive"));
        }
        if !(spec.power > 0.0 && spec.power <= 2.0) {
            return Err(format!("{what}: histogram power {} is outside (0, 2]", spec.power));
        }
        if spec.dim > 4096 {
            return Err(format!("code dimension {} is above 4096", spec.dim));
        }
        let projection = match (spec.projection, spec.dim) {
            (ProjectionKind::Identity, 0) => Vec::new(),
            (ProjectionKind::Identity, _) | (_, 0) => {
                return Err(format!(
                    "{what}: projection {:?} with dimension {}",
                    spec.projection, spec.dim
                ))
            }
            (ProjectionKind::Random, dim) => gaussians(spec.seed, dim * len),
            (ProjectionKind::Learnt, dim) => {
                if spec.components.len() != dim * len || spec.scale.len() != dim {
                    return Err(format!(
                        "{what}: {} projection values and {} scales for {dim} × {len}",
                        spec.components.len(),
                        spec.scale.len()
                    ));
                }
                if spec.components.iter().chain(&spec.scale).any(|x| !x.is_finite()) {
                    return Err(format!("{what}: a projection value is not finite"));
                }
                spec.components
                    .iter()
                    .zip(spec.scale.iter().flat_map(|&s| std::iter::repeat_n(s, len)))
                    .map(|(c, s)| c * s)
                    .collect()
            }
        };
        Ok(CodeModel { spec, projection })
    }

    /// Learn a PCA-whitening model ([`Projection::PcaWhiten`], components `0..dim`, eps 0.1)
    /// from sample templates (fingers unrelated to any gallery) with these bins, dimension
    /// (0: no projection) and seed. The shipped recipe also needs mated pairs: see
    /// [`CodeModel::train_with`] and [`CodeParams::default`].
    pub fn train(
        name: &str,
        version: &str,
        bins: PairBins,
        dim: usize,
        seed: u64,
        samples: &[FingerTemplate],
    ) -> Result<CodeModel, String> {
        let params = CodeParams {
            bins,
            dim,
            seed,
            projection: Projection::PcaWhiten { drop: 0, eps: 0.1, alpha: 0.5 },
            ..CodeParams::default()
        };
        CodeModel::train_with(name, version, &params, samples, &[])
    }

    /// Learn a model from sample templates (fingers unrelated to any gallery) and, for
    /// [`Projection::Lda`], mated pairs of impressions of other such fingers.
    pub fn train_with(
        name: &str,
        version: &str,
        params: &CodeParams,
        samples: &[FingerTemplate],
        mates: &[[FingerTemplate; 2]],
    ) -> Result<CodeModel, String> {
        match params.projection {
            Projection::Lda { pca_dims, eps, beta } if params.dim > 0 => {
                let basis = PcaBasis::fit(
                    params.bins,
                    params.power,
                    params.standardise,
                    pca_dims,
                    params.seed,
                    samples,
                )?;
                let lda = LdaBasis::fit(&basis, pca_dims, eps, params.dim, mates)?;
                CodeModel::from_lda(name, version, &basis, &lda, params.dim, beta)
            }
            Projection::PcaWhiten { drop, eps, alpha } if params.dim > 0 => {
                let basis = PcaBasis::fit(
                    params.bins,
                    params.power,
                    params.standardise,
                    drop + params.dim,
                    params.seed,
                    samples,
                )?;
                CodeModel::from_pca(name, version, &basis, params.dim, drop, eps, alpha)
            }
            _ => {
                params.bins.validate()?;
                let (mean, var) = bin_moments(&params.bins, params.power, samples)?;
                let std = if params.standardise {
                    var.iter().map(|&v| (v.sqrt() as f32).max(1e-3)).collect()
                } else {
                    vec![1.0; mean.len()]
                };
                let projection =
                    if params.dim == 0 { ProjectionKind::Identity } else { ProjectionKind::Random };
                CodeModel::new(CodeModelSpec {
                    name: name.into(),
                    version: version.into(),
                    bins: params.bins,
                    power: params.power,
                    dim: params.dim,
                    seed: params.seed,
                    projection,
                    mean,
                    std,
                    components: Vec::new(),
                    scale: Vec::new(),
                    training: format!(
                        "{projection:?}, standardise {}, {} samples",
                        params.standardise,
                        samples.len()
                    ),
                })
            }
        }
    }

    /// The PCA-whitening model of a fitted basis: components `drop .. drop + dim`, component `m`
    /// scaled by `(λ_m + eps · λ̄)^(−alpha)`.
    pub fn from_pca(
        name: &str,
        version: &str,
        basis: &PcaBasis,
        dim: usize,
        drop: usize,
        eps: f32,
        alpha: f32,
    ) -> Result<CodeModel, String> {
        if dim == 0 || drop + dim > basis.values.len() {
            return Err(format!(
                "components {drop}..{} of a basis of {}",
                drop + dim,
                basis.values.len()
            ));
        }
        if !(eps >= 0.0 && (0.0..=1.0).contains(&alpha)) {
            return Err(format!("whitening eps {eps}, alpha {alpha}"));
        }
        let len = basis.mean.len();
        let reg = f64::from(eps) * basis.mean_eigenvalue;
        let mut scale: Vec<f32> = basis.values[drop..drop + dim]
            .iter()
            .map(|&l| (l.max(0.0) + reg).max(1e-30).powf(-f64::from(alpha)) as f32)
            .collect();
        // A common factor does not change the ranking: keep the scales near 1 for readability.
        let top = scale.iter().copied().fold(0f32, f32::max);
        if top > 0.0 {
            scale.iter_mut().for_each(|s| *s /= top);
        }
        let components = basis.vectors[drop * len..(drop + dim) * len]
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        CodeModel::new(CodeModelSpec {
            name: name.into(),
            version: version.into(),
            bins: basis.bins,
            power: basis.power,
            dim,
            seed: basis.seed,
            projection: ProjectionKind::Learnt,
            mean: basis.mean.clone(),
            std: basis.std.clone(),
            components,
            scale,
            training: format!(
                "PCA-whitening of {} training fingers: components {drop}..{}, eps {eps} (× mean \
                 eigenvalue), alpha {alpha}, standardised {}",
                basis.samples,
                drop + dim,
                basis.standardise
            ),
        })
    }

    /// The PCA + LDA model: the `dim` directions of `lda` along which impressions of a finger
    /// vary least, direction `i` scaled by `w_i^(−beta)` (`w_i` its within-finger variance share;
    /// `beta` 0.5 whitens the within-finger variation).
    pub fn from_lda(
        name: &str,
        version: &str,
        pca: &PcaBasis,
        lda: &LdaBasis,
        dim: usize,
        beta: f32,
    ) -> Result<CodeModel, String> {
        let len = pca.mean.len();
        if dim == 0 || dim > lda.values.len() || lda.vectors.len() != lda.values.len() * len {
            return Err(format!("{dim} of {} LDA directions", lda.values.len()));
        }
        if !(0.0..=1.0).contains(&beta) {
            return Err(format!("LDA beta {beta}"));
        }
        let mut components = Vec::with_capacity(dim * len);
        let mut scale = Vec::with_capacity(dim);
        for i in 0..dim {
            let row = &lda.vectors[i * len..(i + 1) * len];
            let norm = row.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt().max(1e-300);
            components.extend(
                row.iter().map(|&x| half::f16::from_f32((f64::from(x) / norm) as f32).to_f32()),
            );
            scale.push(norm * lda.values[i].max(1e-3).powf(-f64::from(beta)));
        }
        let top = scale.iter().copied().fold(0f64, f64::max).max(1e-300);
        let scale = scale.iter().map(|&s| (s / top) as f32).collect();
        CodeModel::new(CodeModelSpec {
            name: name.into(),
            version: version.into(),
            bins: pca.bins,
            power: pca.power,
            dim,
            seed: pca.seed,
            projection: ProjectionKind::Learnt,
            mean: pca.mean.clone(),
            std: pca.std.clone(),
            components,
            scale,
            training: format!(
                "PCA-whitening of {} training fingers to {} components (eps {} × mean \
                 eigenvalue), then the {dim} least within-finger-varying directions of {} mated \
                 pairs (LDA), scaled by within-finger share^-{beta}; standardised {}",
                pca.samples, lda.pca_dims, lda.eps, lda.pairs, pca.standardise
            ),
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
        if !features(t, &self.spec.bins, self.spec.power, &mut h) {
            return vec![0.0; self.dim()];
        }
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

/// Per-bin mean and variance of the power-normalised histograms of `samples`.
fn bin_moments(
    bins: &PairBins,
    power: f32,
    samples: &[FingerTemplate],
) -> Result<(Vec<f32>, Vec<f64>), String> {
    let len = bins.len();
    let (mut sum, mut sq, mut n) = (vec![0f64; len], vec![0f64; len], 0usize);
    let mut h = vec![0f32; len];
    for t in samples {
        if !features(t, bins, power, &mut h) {
            continue;
        }
        n += 1;
        for ((s, q), &x) in sum.iter_mut().zip(sq.iter_mut()).zip(&h) {
            let x = f64::from(x);
            *s += x;
            *q += x * x;
        }
    }
    if n == 0 {
        return Err("no training template with a minutia pair in range".into());
    }
    let n = n as f64;
    let mean = sum.iter().map(|s| (s / n) as f32).collect();
    let var = sum.iter().zip(&sq).map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0)).collect();
    Ok((mean, var))
}

/// The principal axes of the power-normalised histograms of training templates, enough of them
/// for several PCA-whitening models ([`CodeModel::from_pca`]).
#[derive(Clone)]
pub struct PcaBasis {
    pub bins: PairBins,
    pub power: f32,
    pub standardise: bool,
    pub seed: u64,
    /// Templates it was fitted on (those with a minutia pair in range).
    pub samples: usize,
    /// Per-bin mean, and the per-bin deviation divided out before the PCA (ones unless
    /// standardised).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Eigenvalues, largest first, and their unit eigenvectors (`values.len() × bins`).
    pub values: Vec<f64>,
    pub vectors: Vec<f32>,
    /// Trace of the covariance over the number of bins.
    pub mean_eigenvalue: f64,
    /// Largest relative residual `‖C v − λ v‖ / λ₁` of the returned eigenpairs.
    pub residual: f64,
}

impl fmt::Debug for PcaBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcaBasis")
            .field("bins", &self.bins)
            .field("samples", &self.samples)
            .field("components", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl PcaBasis {
    /// The `components` leading principal axes of the training histograms (covariance, or
    /// correlation if `standardise`): one pass over the templates for the covariance matrix,
    /// then a seeded subspace iteration (the private `top_eigen`).
    pub fn fit(
        bins: PairBins,
        power: f32,
        standardise: bool,
        components: usize,
        seed: u64,
        samples: &[FingerTemplate],
    ) -> Result<PcaBasis, String> {
        bins.validate()?;
        let len = bins.len();
        if components == 0 || components > len {
            return Err(format!("{components} principal components of {len} bins"));
        }
        let mut acc = Gram::new(len);
        let mut h = vec![0f32; len];
        for t in samples {
            if features(t, &bins, power, &mut h) {
                acc.push(&h);
            }
        }
        let n = acc.n;
        if n < 2 {
            return Err(format!("{n} usable training templates"));
        }
        let (mean, mut cov) = acc.finish(true);
        let std: Vec<f32> = if standardise {
            (0..len).map(|i| (cov[i * len + i].max(0.0).sqrt() as f32).max(1e-3)).collect()
        } else {
            vec![1.0; len]
        };
        if standardise {
            for i in 0..len {
                for j in 0..len {
                    cov[i * len + j] /= f64::from(std[i]) * f64::from(std[j]);
                }
            }
        }
        let trace: f64 = (0..len).map(|i| cov[i * len + i]).sum();
        let (values, vectors, residual) = top_eigen(&cov, len, components, 14, seed);
        Ok(PcaBasis {
            bins,
            power,
            standardise,
            seed,
            samples: n,
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
            values,
            vectors: vectors.iter().map(|&x| x as f32).collect(),
            mean_eigenvalue: trace / len as f64,
            residual,
        })
    }
}

/// Within-finger variation in the whitened PCA space of a [`PcaBasis`], from mated pairs of
/// training impressions: the directions along which impressions of one finger vary least
/// relative to how fingers vary (PCA followed by LDA; the total covariance is the identity
/// there, so each eigenvalue is the within-finger share of a direction's variance).
#[derive(Clone)]
pub struct LdaBasis {
    /// Principal components kept, and their whitening regularisation (× mean eigenvalue).
    pub pca_dims: usize,
    pub eps: f32,
    /// Mated pairs it was fitted on.
    pub pairs: usize,
    /// Eigenvalues of the within-finger covariance (half the covariance of mate differences),
    /// smallest first.
    pub values: Vec<f64>,
    /// The matching directions as rows over the histogram bins (whitening included), not
    /// normalised: `values.len() × bins`.
    pub vectors: Vec<f32>,
}

impl fmt::Debug for LdaBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdaBasis")
            .field("pca_dims", &self.pca_dims)
            .field("eps", &self.eps)
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl LdaBasis {
    /// Fit on mated pairs (two impressions of each of some training fingers, disjoint from any
    /// gallery) in the space of the first `pca_dims` components of `pca`, whitened with
    /// `(λ + eps · λ̄)^(−1/2)`; keeps the `keep` least varying directions.
    pub fn fit(
        pca: &PcaBasis,
        pca_dims: usize,
        eps: f32,
        keep: usize,
        mates: &[[FingerTemplate; 2]],
    ) -> Result<LdaBasis, String> {
        let len = pca.mean.len();
        let m = pca_dims;
        if m == 0 || m > pca.values.len() || keep == 0 || keep > m {
            return Err(format!(
                "LDA on {m} of {} principal components, keeping {keep}",
                pca.values.len()
            ));
        }
        if eps.is_nan() || eps < 0.0 {
            return Err(format!("whitening eps {eps}"));
        }
        // Second moment of the mate differences, in the (standardised) bin space.
        let mut acc = Gram::new(len);
        let (mut h0, mut h1) = (vec![0f32; len], vec![0f32; len]);
        for [a, b] in mates {
            if features(a, &pca.bins, pca.power, &mut h0)
                && features(b, &pca.bins, pca.power, &mut h1)
            {
                for ((x, y), s) in h0.iter_mut().zip(&h1).zip(&pca.std) {
                    *x = (*x - y) / s;
                }
                acc.push(&h0);
            }
        }
        let pairs = acc.n;
        if pairs < 2 {
            return Err(format!("{pairs} usable mated pairs"));
        }
        let (_, mut sw) = acc.finish(false);
        sw.iter_mut().for_each(|x| *x *= 0.5);
        // Whitened PCA rows W (m × len) and W · Sw · Wᵀ.
        let reg = f64::from(eps) * pca.mean_eigenvalue;
        let s: Vec<f64> =
            pca.values[..m].iter().map(|&l| 1.0 / (l.max(0.0) + reg).max(1e-300).sqrt()).collect();
        let w: Vec<f64> = (0..m * len).map(|i| f64::from(pca.vectors[i]) * s[i / len]).collect();
        let swf: Vec<f32> = sw.iter().map(|&x| x as f32).collect();
        let mut z = vec![0f64; m * len];
        mul_rows(&swf, len, &w, &mut z);
        let mut t = projected(&w, &z, m, len);
        let (vals, vt) = jacobi_eigen(&mut t, m);
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&x, &y| vals[x].total_cmp(&vals[y]));
        let mut values = Vec::with_capacity(keep);
        let mut vectors = vec![0f32; keep * len];
        let mut u = vec![0f64; len];
        for (i, &o) in order.iter().take(keep).enumerate() {
            values.push(vals[o]);
            u.iter_mut().for_each(|x| *x = 0.0);
            for (a, &coef) in vt[o * m..(o + 1) * m].iter().enumerate() {
                for (x, y) in u.iter_mut().zip(&w[a * len..(a + 1) * len]) {
                    *x += coef * y;
                }
            }
            for (x, &y) in vectors[i * len..(i + 1) * len].iter_mut().zip(&u) {
                *x = y as f32;
            }
        }
        Ok(LdaBasis { pca_dims: m, eps, pairs, values, vectors })
    }
}

/// Streaming mean and covariance of `d`-dimensional rows: rows are buffered in blocks, whose
/// Gram matrix is added by a cache-blocked `f32` kernel into an `f64` total (upper triangle).
struct Gram {
    d: usize,
    n: usize,
    sum: Vec<f64>,
    total: Vec<f64>,
    block: Vec<f32>,
    rows: usize,
    acc: Vec<f32>,
}

const GRAM_ROWS: usize = 256;
const GRAM_TILE: usize = 256;

impl Gram {
    fn new(d: usize) -> Gram {
        Gram {
            d,
            n: 0,
            sum: vec![0.0; d],
            total: vec![0.0; d * d],
            block: vec![0.0; GRAM_ROWS * d],
            rows: 0,
            acc: vec![0.0; d * d],
        }
    }

    fn push(&mut self, x: &[f32]) {
        self.block[self.rows * self.d..(self.rows + 1) * self.d].copy_from_slice(x);
        for (s, &v) in self.sum.iter_mut().zip(x) {
            *s += f64::from(v);
        }
        self.rows += 1;
        self.n += 1;
        if self.rows == GRAM_ROWS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let (d, rows) = (self.d, self.rows);
        let x = &self.block[..rows * d];
        for jt in (0..d).step_by(GRAM_TILE) {
            let jend = (jt + GRAM_TILE).min(d);
            for i in 0..jend {
                let j0 = jt.max(i);
                let out = &mut self.acc[i * d + j0..i * d + jend];
                let mut r = 0;
                while r + 4 <= rows {
                    let a =
                        [x[r * d + i], x[(r + 1) * d + i], x[(r + 2) * d + i], x[(r + 3) * d + i]];
                    if a != [0.0; 4] {
                        let x0 = &x[r * d + j0..r * d + jend];
                        let x1 = &x[(r + 1) * d + j0..(r + 1) * d + jend];
                        let x2 = &x[(r + 2) * d + j0..(r + 2) * d + jend];
                        let x3 = &x[(r + 3) * d + j0..(r + 3) * d + jend];
                        for ((((o, p), q), s), t) in out.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3)
                        {
                            *o += a[0] * p + a[1] * q + a[2] * s + a[3] * t;
                        }
                    }
                    r += 4;
                }
                while r < rows {
                    let a = x[r * d + i];
                    if a != 0.0 {
                        for (o, p) in out.iter_mut().zip(&x[r * d + j0..r * d + jend]) {
                            *o += a * p;
                        }
                    }
                    r += 1;
                }
            }
        }
        for (t, a) in self.total.iter_mut().zip(self.acc.iter_mut()) {
            *t += f64::from(*a);
            *a = 0.0;
        }
        self.rows = 0;
    }

    /// Mean and covariance (full symmetric `d × d`, divided by `n`); with `centred` false, the
    /// second moment about zero instead of the covariance.
    fn finish(mut self, centred: bool) -> (Vec<f64>, Vec<f64>) {
        self.flush();
        let (d, n) = (self.d, self.n as f64);
        let mut mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        if !centred {
            mean.iter_mut().for_each(|m| *m = 0.0);
        }
        let mut c = self.total;
        for i in 0..d {
            for j in i..d {
                let v = c[i * d + j] / n - mean[i] * mean[j];
                c[i * d + j] = v;
                c[j * d + i] = v;
            }
        }
        (mean, c)
    }
}

/// The `k` largest eigenpairs of the symmetric `d × d` matrix `c` (row-major): subspace
/// iteration on a seeded Gaussian block of `k` plus some oversampling vectors (`iters`
/// multiplications by `c`, each followed by Gram–Schmidt), then Rayleigh–Ritz (cyclic Jacobi on
/// the small projected matrix). Returns the eigenvalues (largest first), the eigenvectors
/// (`k × d`, rows) and the largest residual `‖c v − λ v‖ / |λ₁|`.
fn top_eigen(c: &[f64], d: usize, k: usize, iters: usize, seed: u64) -> (Vec<f64>, Vec<f64>, f64) {
    assert!(c.len() == d * d && (1..=d).contains(&k));
    let b = (k + (k / 4).max(16)).min(d);
    let cf: Vec<f32> = c.iter().map(|&x| x as f32).collect();
    let mut q: Vec<f64> = gaussians(seed, b * d).iter().map(|&x| f64::from(x)).collect();
    orthonormalise(&mut q, d, seed);
    let mut z = vec![0f64; b * d];
    for _ in 0..iters {
        mul_rows(&cf, d, &q, &mut z);
        std::mem::swap(&mut q, &mut z);
        orthonormalise(&mut q, d, seed);
    }
    // Rayleigh–Ritz in f64.
    mul_rows_f64(c, d, &q, &mut z);
    let mut t = projected(&q, &z, b, d);
    let (vals, vt) = jacobi_eigen(&mut t, b);
    let mut order: Vec<usize> = (0..b).collect();
    order.sort_by(|&x, &y| vals[y].total_cmp(&vals[x]));
    let mut values = Vec::with_capacity(k);
    let mut vectors = vec![0f64; k * d];
    let mut residual = 0f64;
    for (m, &o) in order.iter().take(k).enumerate() {
        values.push(vals[o]);
        let (u, w) = (&mut vectors[m * d..(m + 1) * d], &vt[o * b..(o + 1) * b]);
        let mut cu = vec![0f64; d];
        for (a, &coef) in w.iter().enumerate() {
            for ((ui, qi), (ci, zi)) in u
                .iter_mut()
                .zip(&q[a * d..(a + 1) * d])
                .zip(cu.iter_mut().zip(&z[a * d..(a + 1) * d]))
            {
                *ui += coef * qi;
                *ci += coef * zi;
            }
        }
        let r = cu.iter().zip(u.iter()).map(|(ci, ui)| (ci - vals[o] * ui).powi(2)).sum::<f64>();
        residual = residual.max(r.sqrt());
    }
    let top = values.first().map_or(1.0, |v: &f64| v.abs()).max(1e-300);
    (values, vectors, residual / top)
}

/// `z_v = c · q_v` for every row `q_v` of `q` (`c` in f32, blocks of rows of `q` kept in cache).
fn mul_rows(c: &[f32], d: usize, q: &[f64], z: &mut [f64]) {
    let qf: Vec<f32> = q.iter().map(|&x| x as f32).collect();
    let b = q.len() / d;
    for vb in (0..b).step_by(16) {
        let vend = (vb + 16).min(b);
        for i in 0..d {
            let row = &c[i * d..(i + 1) * d];
            for v in vb..vend {
                z[v * d + i] = f64::from(dot(row, &qf[v * d..(v + 1) * d]));
            }
        }
    }
}

fn mul_rows_f64(c: &[f64], d: usize, q: &[f64], z: &mut [f64]) {
    let b = q.len() / d;
    for vb in (0..b).step_by(16) {
        let vend = (vb + 16).min(b);
        for i in 0..d {
            let row = &c[i * d..(i + 1) * d];
            for v in vb..vend {
                z[v * d + i] = dot64(row, &q[v * d..(v + 1) * d]);
            }
        }
    }
}

/// Modified Gram–Schmidt, twice, on the rows of `q` (`d` long); a row that vanishes (the span is
/// smaller than the block) is replaced by a fresh seeded random direction.
fn orthonormalise(q: &mut [f64], d: usize, seed: u64) {
    let b = q.len() / d;
    for v in 0..b {
        for attempt in 0..4u64 {
            let before = dot64(&q[v * d..(v + 1) * d], &q[v * d..(v + 1) * d]).sqrt();
            for _ in 0..2 {
                for u in 0..v {
                    let (head, tail) = q.split_at_mut(v * d);
                    let (qu, qv) = (&head[u * d..(u + 1) * d], &mut tail[..d]);
                    let r = dot64(qu, qv);
                    qv.iter_mut().zip(qu).for_each(|(x, y)| *x -= r * y);
                }
            }
            let qv = &mut q[v * d..(v + 1) * d];
            let norm = dot64(qv, qv).sqrt();
            if norm > 1e-10 * before.max(1e-300) && norm > 0.0 {
                qv.iter_mut().for_each(|x| *x /= norm);
                break;
            }
            let fresh = gaussians(seed ^ (0xD1B5_4A32_D192_ED03 ^ ((v as u64) << 8 | attempt)), d);
            qv.iter_mut().zip(fresh).for_each(|(x, y)| *x = f64::from(y));
        }
    }
}

/// Eigen-decomposition of the symmetric `n × n` matrix `a` (row-major, destroyed) by cyclic
/// Jacobi rotations: the eigenvalues (unordered) and the eigenvectors as rows (`n × n`).
fn jacobi_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * norm.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 || apq.abs() < 1e-18 * norm {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J on rows and columns p, q.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vp, vq) = (v[p * n + k], v[q * n + k]);
                    v[p * n + k] = c * vp - s * vq;
                    v[q * n + k] = s * vp + c * vq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Inner product of two codes (or any two `f32` slices of one length).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// The symmetrised `n × n` matrix `T[a][b] = ½ (x_a · y_b + x_b · y_a)` of rows of length `len`
/// (`y` = the covariance applied to `x`): the small matrix of a Rayleigh–Ritz step.
fn projected(x: &[f64], y: &[f64], n: usize, len: usize) -> Vec<f64> {
    fn row(v: &[f64], i: usize, len: usize) -> &[f64] {
        &v[i * len..(i + 1) * len]
    }
    let mut t = vec![0f64; n * n];
    for a in 0..n {
        for b in a..n {
            let v = 0.5
                * (dot64(row(x, a, len), row(y, b, len)) + dot64(row(x, b, len), row(y, a, len)));
            t[a * n + b] = v;
            t[b * n + a] = v;
        }
    }
    t
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcc::tests::{impression, master, Distortion, Rng};

    /// Two impressions each of `n` simulated fingers.
    fn fingers(seed: u64, n: usize) -> Vec<[FingerTemplate; 2]> {
        let mut rng = Rng::new(seed);
        let d = Distortion::realistic();
        (0..n)
            .map(|_| {
                let m = master(&mut rng);
                [impression(&m, &d, &mut rng), impression(&m, &d, &mut rng)]
            })
            .collect()
    }

    /// Small bins: the tests' models train in a moment.
    fn small_bins() -> PairBins {
        PairBins { d_bins: 6, a_bins: 8, b_bins: 8, ..PairBins::default() }
    }

    fn score(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Mates score higher than non-mates on average, and most rank among the best tenth of the
    /// other fingers' second impressions (a 10 % penetration).
    fn assert_separates(model: &CodeModel, test: &[[FingerTemplate; 2]], min_hit: f32) {
        let codes: Vec<[Vec<f32>; 2]> =
            test.iter().map(|[a, b]| [model.encode(a), model.encode(b)]).collect();
        let n = codes.len();
        let (mut genuine, mut impostor, mut hits) = (0f32, 0f32, 0usize);
        for (i, [p, _]) in codes.iter().enumerate() {
            let mate = score(p, &codes[i][1]);
            genuine += mate;
            let mut above = 0;
            for (j, [_, other]) in codes.iter().enumerate() {
                if j != i {
                    let s = score(p, other);
                    impostor += s;
                    above += usize::from(s >= mate);
                }
            }
            hits += usize::from(above < n / 10);
        }
        let (genuine, impostor) = (genuine / n as f32, impostor / (n * (n - 1)) as f32);
        assert!(genuine > impostor + 0.15, "genuine {genuine} vs impostor {impostor}");
        let rate = hits as f32 / n as f32;
        assert!(rate >= min_hit, "{hits} of {n} mates in the best tenth");
    }

    #[test]
    fn encode_is_deterministic_normalised_and_separates_fingers() {
        let train = fingers(1, 400);
        let samples: Vec<FingerTemplate> = train.iter().map(|p| p[0].clone()).collect();
        let test = fingers(2, 40);
        let base = CodeParams {
            bins: small_bins(),
            dim: 48,
            projection: Projection::PcaWhiten { drop: 0, eps: 0.1, alpha: 0.5 },
            ..CodeParams::default()
        };
        let variants = [
            CodeParams { dim: 0, projection: Projection::Random, ..base },
            CodeParams { projection: Projection::Random, standardise: true, ..base },
            base,
            CodeParams {
                projection: Projection::Lda { pca_dims: 96, eps: 0.1, beta: 0.5 },
                ..base
            },
        ];
        for params in variants {
            let model = CodeModel::train_with("t", "1", &params, &samples, &train).unwrap();
            let again = CodeModel::train_with("t", "1", &params, &samples, &train).unwrap();
            assert!(model.spec() == again.spec(), "{params:?}: training is deterministic");
            for [a, _] in &test[..5] {
                let code = model.encode(a);
                assert_eq!(code.len(), model.dim());
                assert_eq!(code, model.encode(a));
                assert_eq!(code, again.encode(a));
                let norm = code.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "{params:?}: norm {norm}");
            }
            assert_separates(&model, &test, 0.5);
        }
    }

    #[test]
    fn the_shipped_model_separates_simulated_fingers() {
        let model = shipped();
        assert_eq!((model.spec().name.as_str(), model.spec().version.as_str()), ("mpc", "1"));
        assert!(model.dim() <= 256);
        let test = fingers(3, 100);
        let code = model.encode(&test[0][0]);
        assert_eq!(code.len(), model.dim());
        assert_eq!(code, shipped().encode(&test[0][0]));
        assert_separates(&model, &test, 0.75);
    }

    #[test]
    fn a_template_without_pairs_gets_the_zero_code() {
        let mut t = fingers(4, 1)[0][0].clone();
        t.minutiae.truncate(1);
        let model = shipped();
        assert_eq!(model.encode(&t), vec![0.0; model.dim()]);
    }

    #[test]
    fn binary_spec_round_trips_and_refuses_corruption() {
        let bytes = include_bytes!("../models/mpc@1.bin");
        let spec = CodeModelSpec::from_bytes(bytes).unwrap();
        assert_eq!(spec.projection, ProjectionKind::Learnt);
        assert_eq!(spec.to_bytes(), bytes.to_vec());
        assert!(CodeModel::new(spec.clone()).is_ok());

        // A freshly trained model survives the trip exactly (its projection is f16-exact).
        let train = fingers(5, 200);
        let samples: Vec<FingerTemplate> = train.iter().map(|p| p[0].clone()).collect();
        let model = CodeModel::train("t", "2", small_bins(), 32, 9, &samples).unwrap();
        assert_eq!(model.spec().projection, ProjectionKind::Learnt);
        let back = CodeModelSpec::from_bytes(&model.spec().to_bytes()).unwrap();
        assert!(back == *model.spec());
        let back = CodeModel::new(back).unwrap();
        assert_eq!(back.encode(&train[0][1]), model.encode(&train[0][1]));
        let random = CodeParams {
            bins: small_bins(),
            dim: 32,
            projection: Projection::Random,
            ..CodeParams::default()
        };
        let model = CodeModel::train_with("t", "3", &random, &samples, &[]).unwrap();
        assert!(CodeModelSpec::from_bytes(&model.spec().to_bytes()).unwrap() == *model.spec());

        // Any flipped bit, a truncation or a foreign file is refused.
        for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x10;
            assert!(CodeModelSpec::from_bytes(&bad).is_err(), "flipped byte {at} accepted");
        }
        let mut bad = bytes.to_vec();
        bad[bytes.len() / 2] ^= 1;
        let err = CodeModelSpec::from_bytes(&bad).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        assert!(CodeModelSpec::from_bytes(&bytes[..bytes.len() - 100]).is_err());
        assert!(CodeModelSpec::from_bytes(b"{\"name\":\"mpc\"}").is_err());
    }

    #[test]
    fn new_refuses_inconsistent_specs() {
        let mut spec = shipped().spec().clone();
        spec.scale.pop();
        assert!(CodeModel::new(spec).is_err());
        let mut spec = shipped().spec().clone();
        spec.mean.pop();
        assert!(CodeModel::new(spec).is_err());
        let mut spec = shipped().spec().clone();
        spec.components[3] = f32::NAN;
        assert!(CodeModel::new(spec).is_err());
    }

    /// A symmetric matrix with a known, decaying spectrum: `Q diag(λ) Qᵀ`.
    fn known(d: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut q: Vec<f64> = gaussians(seed, d * d).iter().map(|&x| f64::from(x)).collect();
        orthonormalise(&mut q, d, seed);
        let lambda: Vec<f64> = (0..d).map(|i| 10.0 * 0.9f64.powi(i as i32) + 0.01).collect();
        let mut c = vec![0f64; d * d];
        for (k, l) in lambda.iter().enumerate() {
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] += l * q[k * d + i] * q[k * d + j];
                }
            }
        }
        (c, lambda)
    }

    #[test]
    fn eigensolvers_find_a_known_spectrum() {
        let d = 60;
        let (c, lambda) = known(d, 11);
        let (vals, vecs) = jacobi_eigen(&mut c.clone(), d);
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (got, want) in sorted.iter().zip(&lambda) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        for (k, &l) in vals.iter().enumerate() {
            let v = &vecs[k * d..(k + 1) * d];
            for i in 0..d {
                let cv = dot64(&c[i * d..(i + 1) * d], v);
                assert!((cv - l * v[i]).abs() < 1e-9);
            }
        }
        let (top, vectors, residual) = top_eigen(&c, d, 8, 60, 5);
        assert!(residual < 1e-5, "residual {residual}");
        for (m, (got, want)) in top.iter().zip(&lambda).enumerate() {
            assert!((got - want).abs() < 1e-4 * want, "λ{m}: {got} vs {want}");
            let v = &vectors[m * d..(m + 1) * d];
            assert!((dot64(v, v) - 1.0).abs() < 1e-9);
        }
    }
}
